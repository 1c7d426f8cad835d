"""Tasks own a loss, the validation metric it is judged by (and its direction) and what the trained model
can then do (as in TF-Recommenders): the towers do not change when the task does.

- `RatingTask`: λ1·(inverse-frequency-weighted MSE) + λ2·(in-batch margin loss) on (user, item, rating)
  pairs, the anime study's loss; monitored by valid_rmse; gives the model the `ratings` capability.
- `RetrievalTask`: softmax over in-batch items (optionally plus uniformly sampled items), or over the whole
  catalogue, with log-Q correction for the popularity bias of in-batch sampling and accidental hits
  removed; monitored by top10_accuracy.
- `MultinomialTask`: one example per user, all of their items as targets of one softmax over the
  catalogue (Mult-DAE style), optionally distilling a fitted teacher's ranking (`Distillation`); monitored
  by top10_accuracy.
- `BCETask`: binary cross-entropy against uniformly sampled negatives; monitored by top10_accuracy.

Every task's `loss(batch, towers, generator)` has the same shape: it asks the towers (`TowerScorer`) for
what it needs. Validation metrics come from `recforge.evaluation.metrics`; no task stores state that a
saved model would need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from recforge.coldstart import RATINGS
from recforge.data.interactions import Interactions
from recforge.errors import ConfigError
from recforge.evaluation import metrics as M


class TowerScorer(Protocol):
    """What a task asks of the towers while training (training-mode vectors: dropout applied)."""

    n_items: int

    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor: ...

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor: ...

    def all_item_vectors(self) -> torch.Tensor: ...

    def item_bias(self) -> torch.Tensor | None: ...

    def rating(
        self, user_vectors: torch.Tensor, item_vectors: torch.Tensor, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class PairBatch:
    """(user, item) training rows, with the (scaled) rating for rating tasks."""

    users: torch.Tensor
    items: torch.Tensor
    targets: torch.Tensor | None = None


@dataclass(frozen=True)
class UserBatch:
    """Whole users: every positive item of each user (a torch CSR pair indptr, indices over all users)."""

    users: torch.Tensor
    positives: tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Embeddings:
    """Evaluation-mode towers' outputs for every known user and item, and the biases."""

    users: torch.Tensor
    items: torch.Tensor
    user_bias: torch.Tensor
    item_bias: torch.Tensor


class Task(Protocol):
    name: str
    batching: Literal["pairs", "users"]
    monitor: str  # the validation metric early stopping watches (direction from the metric table)
    capabilities: frozenset[str]  # what a model trained on this task can serve beyond ranking

    def training_rows(self, train: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...

    def loss(self, batch: PairBatch | UserBatch, towers: TowerScorer, generator: torch.Generator) -> torch.Tensor: ...

    def validation_set(self, valid: Interactions) -> dict[str, np.ndarray] | None: ...

    def validate(self, embeddings: Embeddings, valid: dict[str, np.ndarray], exclude: torch.Tensor | None) -> dict: ...


def positive_pairs(train: Interactions, threshold: float | None) -> tuple[np.ndarray, np.ndarray, None]:
    """Each (user, item) once (its latest row); with `threshold`, only ratings >= it (unrated rows count)."""
    rows = train.latest_per_pair()
    if threshold is not None:
        if train.rating is None:
            raise ConfigError("positive_threshold needs ratings")
        rows = rows[np.nan_to_num(train.rating[rows], nan=np.inf) >= threshold]
    return train.user_index[rows].astype(np.int64), train.item_index[rows].astype(np.int64), None


class _RankingValidation:
    """Top-k accuracy on each validation user's latest item (FactorizedTopK), training items excluded."""

    monitor = "top10_accuracy"
    capabilities: frozenset[str] = frozenset()
    temperature = 1.0

    def validation_set(self, valid: Interactions) -> dict[str, np.ndarray] | None:
        rows = valid.latest_per_pair()
        return {"users": valid.user_index[rows].astype(np.int64), "items": valid.item_index[rows].astype(np.int64)}

    @torch.no_grad()
    def validate(self, embeddings: Embeddings, valid: dict[str, np.ndarray], exclude: torch.Tensor | None) -> dict:
        users, items = torch.from_numpy(valid["users"]), torch.from_numpy(valid["items"])
        # score = ⟨u, v⟩ + T·b ranks exactly like the training logits ⟨u, v⟩/T + b
        user_side = torch.cat([embeddings.users[users], torch.ones(len(users), 1)], dim=1)
        item_side = torch.cat([embeddings.items, (self.temperature * embeddings.item_bias)[:, None]], dim=1)
        ranks = target_ranks(user_side, item_side, items, exclude)
        return {f"top{k}_accuracy": M.topk_accuracy(ranks, k) for k in M.TOPK_ACCURACY_KS}


class RatingTask:
    """loss = λ1·Σ w(y)(ŷ − y)² / Σ w(y) + λ2·mean over in-batch pairs with y_i − y_j > m of max(0, m − (ŷ_i − ŷ_j)).

    w(y) is the inverse frequency of the target value y in the training set, normalised to mean 1 over
    training rows, so rare ratings (1s and 2s) weigh as much in total as common ones. Targets are scaled
    by (y − low) / span; validation RMSE is reported on the original scale, clipped to it.
    """

    name = "rating"
    batching: Literal["pairs", "users"] = "pairs"
    monitor = "valid_rmse"
    capabilities = frozenset({RATINGS})

    def __init__(
        self,
        low: float = 0.0,
        span: float = 1.0,
        mse_weight: float = 1.0,
        margin_weight: float = 0.0,
        margin: float = 0.5,
        inverse_frequency: bool = True,
        relu: bool = False,
        rating_scale: tuple[float, float] | None = None,
    ) -> None:
        self.low, self.span = low, span
        self.mse_weight, self.margin_weight, self.margin = mse_weight, margin_weight, margin / span
        self.inverse_frequency, self.relu, self.rating_scale = inverse_frequency, relu, rating_scale
        self.values = self.weights = torch.zeros(0)

    def training_rows(self, train: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        users, items, ratings = train.rated_triples("the two-tower rating task")
        targets = (ratings - self.low) / self.span
        values, counts = np.unique(targets, return_counts=True)
        weights = len(targets) / (len(values) * counts) if self.inverse_frequency else np.ones(len(values))
        self.values = torch.tensor(values, dtype=torch.float32)
        self.weights = torch.tensor(weights, dtype=torch.float32)
        return users, items, targets

    def sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        values, weights = self.values.to(targets.device), self.weights.to(targets.device)
        position = torch.searchsorted(values, targets).clamp(max=len(values) - 1)
        exact = values[position] == targets
        return torch.where(exact, weights[position], torch.ones_like(targets))

    def loss(self, batch: PairBatch | UserBatch, towers: TowerScorer, generator: torch.Generator) -> torch.Tensor:
        assert isinstance(batch, PairBatch) and batch.targets is not None
        user_vectors = towers.user_vectors(batch.users, exclude=batch.items)
        predictions = towers.rating(user_vectors, towers.item_vectors(batch.items), batch.users, batch.items)
        return self.prediction_loss(predictions, batch.targets)

    def prediction_loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weights = self.sample_weights(targets)
        loss = self.mse_weight * (weights * (predictions - targets) ** 2).sum() / weights.sum()
        if self.margin_weight:
            target_gap = targets[:, None] - targets[None, :]
            predicted_gap = predictions[:, None] - predictions[None, :]
            ordered = (target_gap > self.margin).float()  # a dense mask: boolean indexing is ~10x slower here
            pairs = ordered.sum()
            if pairs > 0:
                loss = loss + self.margin_weight * (torch.relu(self.margin - predicted_gap) * ordered).sum() / pairs
        return loss

    def validation_set(self, valid: Interactions) -> dict[str, np.ndarray] | None:
        if valid.rating is None or valid.n_rated == 0:
            return None
        users, items, ratings = valid.rated_triples("validation of the rating task")
        return {"users": users, "items": items, "ratings": ratings}

    @torch.no_grad()
    def validate(self, embeddings: Embeddings, valid: dict[str, np.ndarray], exclude: torch.Tensor | None) -> dict:
        users, items = torch.from_numpy(valid["users"]), torch.from_numpy(valid["items"])
        scaled = (embeddings.users[users] * embeddings.items[items]).sum(1)
        scaled = scaled + embeddings.user_bias[users] + embeddings.item_bias[items]
        if self.relu:
            scaled = torch.relu(scaled)
        predictions = scaled.numpy().astype(np.float64) * self.span + self.low
        if self.rating_scale is not None:
            predictions = np.clip(predictions, *self.rating_scale)
        return {"valid_rmse": M.rmse(valid["ratings"], predictions)}


class RetrievalTask(_RankingValidation):
    """Sampled softmax with log-Q correction, or the exact softmax over the catalogue (`full`).

    Candidates for each batch are the batch's positive items, plus `uniform` extra items drawn uniformly
    (mixed negative sampling). Each candidate's logit is reduced by log of its expected count among the
    candidates (log-Q), so popular items are not punished for appearing as negatives more often. A
    candidate equal to a row's positive item, other than the row's own positive, is masked (an
    "accidental hit").
    """

    name = "retrieval"
    batching: Literal["pairs", "users"] = "pairs"

    def __init__(
        self,
        temperature: float = 0.05,
        logq_correction: bool = True,
        full: bool = False,
        uniform_negatives: int = 0,
        threshold: float | None = None,
    ) -> None:
        self.temperature, self.logq_correction, self.full = temperature, logq_correction, full
        self.uniform_negatives, self.threshold = uniform_negatives, threshold
        self.probability = torch.zeros(0)

    def training_rows(self, train: Interactions) -> tuple[np.ndarray, np.ndarray, None]:
        users, items, _ = positive_pairs(train, self.threshold)
        frequency = np.bincount(items, minlength=train.n_items).astype(np.float64) + 1e-3
        self.probability = torch.tensor(frequency / frequency.sum(), dtype=torch.float32)
        return users, items, None

    def loss(self, batch: PairBatch | UserBatch, towers: TowerScorer, generator: torch.Generator) -> torch.Tensor:
        assert isinstance(batch, PairBatch)
        users = towers.user_vectors(batch.users, exclude=batch.items)
        positive_ids, bias = batch.items, towers.item_bias()
        if self.full:
            logits = users @ towers.all_item_vectors().T / self.temperature
            if bias is not None:
                logits = logits + bias
            return nn.functional.cross_entropy(logits, positive_ids)
        positives = towers.item_vectors(positive_ids)
        size = len(positive_ids)
        candidates, candidate_ids = positives, positive_ids
        if self.uniform_negatives:
            extra_ids = torch.randint(0, towers.n_items, (self.uniform_negatives,), generator=generator)
            extra_ids = extra_ids.to(positive_ids.device)
            candidates = torch.cat([positives, towers.item_vectors(extra_ids)])
            candidate_ids = torch.cat([positive_ids, extra_ids])
        logits = users @ candidates.T / self.temperature
        if bias is not None:
            logits = logits + bias[candidate_ids]
        if self.logq_correction:
            probability = self.probability.to(logits.device)
            expected = size * probability[candidate_ids] + self.uniform_negatives / len(probability)
            logits = logits - torch.log(expected.clamp_min(1e-12))
        accidental = positive_ids[:, None] == candidate_ids[None, :]
        accidental[:, :size] &= ~torch.eye(size, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(accidental, float("-inf"))
        return nn.functional.cross_entropy(logits, torch.arange(size, device=logits.device))


@dataclass(frozen=True)
class Distillation:
    """Ranking distillation (Tang & Wang, KDD 2018; Hinton et al.'s soft targets): a stronger model, fitted
    first on the same training data, scores each batch's users; its scores, standardised per user and
    divided by `temperature`, give a softmax over the items the user has not interacted with, and the towers'
    softmax over the same items is pulled towards it by cross-entropy, weighted by `weight`, beside the
    task's own loss. The teacher is needed only while training: the towers alone are saved and served."""

    scores: Callable[[np.ndarray], np.ndarray]  # user indices -> (n, n_items) teacher scores
    weight: float
    temperature: float

    def loss(self, logits: torch.Tensor, users: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """`logits` (n, n_items) are the towers' for `users`; `seen` (n, n_items) marks their training items."""
        keep = ~seen.all(dim=1)  # a user who has seen every item has nothing left to rank
        logits, seen, users = logits[keep], seen[keep], users[keep]
        teacher = torch.from_numpy(np.asarray(self.scores(users.cpu().numpy()), dtype=np.float32)).to(logits.device)
        spread = teacher.std(dim=1, keepdim=True).clamp_min(1e-6)
        teacher = (teacher - teacher.mean(dim=1, keepdim=True)) / spread / self.temperature
        target = torch.softmax(teacher.masked_fill(seen, float("-inf")), dim=1)
        student = torch.log_softmax(logits.masked_fill(seen, float("-inf")), dim=1).masked_fill(seen, 0.0)
        return self.weight * -(target * student).sum(dim=1).mean()


class MultinomialTask(_RankingValidation):
    """Multinomial likelihood per user (Mult-DAE style): the user's vector (from a history bag with dropout)
    scores every item; the loss is −Σ_{i in the user's positives} log softmax_i, averaged over users. Each
    user's whole history is one example, so every user counts the same per epoch. With `distillation`, a
    teacher's ranking of each user's other items is learnt as well (`Distillation`)."""

    name = "multinomial"
    batching: Literal["pairs", "users"] = "users"

    def __init__(
        self, temperature: float = 0.5, threshold: float | None = None, distillation: Distillation | None = None
    ) -> None:
        self.temperature, self.threshold, self.distillation = temperature, threshold, distillation

    def training_rows(self, train: Interactions) -> tuple[np.ndarray, np.ndarray, None]:
        return positive_pairs(train, self.threshold)

    def loss(self, batch: PairBatch | UserBatch, towers: TowerScorer, generator: torch.Generator) -> torch.Tensor:
        assert isinstance(batch, UserBatch)
        indptr, indices = batch.positives
        users = batch.users
        logits = towers.user_vectors(users) @ towers.all_item_vectors().T / self.temperature
        bias = towers.item_bias()
        if bias is not None:
            logits = logits + bias
        log_probabilities = torch.log_softmax(logits, dim=1)
        counts = indptr[users + 1] - indptr[users]
        offsets = torch.cumsum(counts, 0) - counts
        positions = torch.repeat_interleave(indptr[users] - offsets, counts) + torch.arange(
            int(counts.sum()), device=counts.device
        )
        rows = torch.repeat_interleave(torch.arange(len(users), device=counts.device), counts)
        loss = -log_probabilities[rows, indices[positions]].sum() / len(users)
        if self.distillation is None:
            return loss
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen[rows, indices[positions]] = True
        return loss + self.distillation.loss(logits, users, seen)


class BCETask(_RankingValidation):
    """−log σ(⟨u, v⟩) − Σ_{v'} log(1 − σ(⟨u, v'⟩)) over each positive and `n_negatives` uniform negatives."""

    name = "bce"
    batching: Literal["pairs", "users"] = "pairs"

    def __init__(self, n_negatives: int = 4, threshold: float | None = None) -> None:
        self.n_negatives, self.threshold = n_negatives, threshold

    def training_rows(self, train: Interactions) -> tuple[np.ndarray, np.ndarray, None]:
        return positive_pairs(train, self.threshold)

    def loss(self, batch: PairBatch | UserBatch, towers: TowerScorer, generator: torch.Generator) -> torch.Tensor:
        assert isinstance(batch, PairBatch)
        users = towers.user_vectors(batch.users, exclude=batch.items)
        positives = towers.item_vectors(batch.items)
        negative_ids = torch.randint(0, towers.n_items, (len(batch.items) * self.n_negatives,), generator=generator)
        negatives = towers.item_vectors(negative_ids.to(batch.items.device)).view(
            len(batch.items), self.n_negatives, -1
        )
        positive_logits = (users * positives).sum(1)
        negative_logits = torch.einsum("bd,bnd->bn", users, negatives)
        return nn.functional.softplus(-positive_logits).mean() + nn.functional.softplus(negative_logits).sum(1).mean()


def target_ranks(
    user_embeddings: torch.Tensor,
    item_embeddings: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    batch: int = 1024,
) -> np.ndarray:
    """0-based rank of each (user, target item) pair among all items: how many items score strictly higher.
    `exclude` (optional, one boolean row per pair) marks items to skip (e.g. training items)."""
    ranks = []
    for start in range(0, len(targets), batch):
        scores = user_embeddings[start : start + batch] @ item_embeddings.T
        target_scores = scores.gather(1, targets[start : start + batch, None])
        if exclude is not None:
            scores = scores.masked_fill(exclude[start : start + batch], float("-inf"))
        ranks.append((scores > target_scores).sum(1).numpy())
    return np.concatenate(ranks) if ranks else np.zeros(0)
