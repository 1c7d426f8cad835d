"""What neural and gradient-trained models share: optimizer construction, seeding, device choice."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from recforge.errors import ConfigError

OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "adagrad": torch.optim.Adagrad,
}


def make_optimizer(
    name: str, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, kind: str, n_epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule: constant, or a linear / cosine decay to zero at `n_epochs`."""
    import math

    if kind == "constant":
        factor = lambda epoch: 1.0  # noqa: E731
    elif kind == "linear":
        factor = lambda epoch: max(0.0, 1.0 - epoch / n_epochs)  # noqa: E731
    elif kind == "cosine":
        factor = lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, n_epochs) / n_epochs))  # noqa: E731
    else:
        raise ConfigError(f"unknown learning-rate schedule {kind!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class EarlyStopping:
    """Tracks a validation metric, keeps the best weights, and says when to stop.

    `mode="max"` for accuracies/NDCG, `"min"` for losses/RMSE. `patience` epochs without improvement
    (by more than `min_delta`) stop training; `restore(module)` loads the best weights back.
    """

    def __init__(self, patience: int | None, mode: str = "max", min_delta: float = 1e-5) -> None:
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0

    def update(self, value: float, epoch: int, module: torch.nn.Module) -> bool:
        """Record this epoch's metric; returns True when training should stop."""
        better = self.best is None or (
            value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        )
        if better:
            self.best, self.best_epoch, self.stale = value, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience

    def state(self) -> dict:
        """Plain-container state for checkpoints."""
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale, "best_state": self.best_state}

    def load_state(self, state: dict) -> None:
        self.best, self.best_epoch, self.stale = state["best"], state["best_epoch"], state["stale"]
        self.best_state = state["best_state"]

    def restore(self, module: torch.nn.Module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator (dropout, init) and return a generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
