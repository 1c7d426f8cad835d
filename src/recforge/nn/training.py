"""The one epoch loop every model that trains by epochs runs (`fit_epochs`), and what it is built from.

A model hands `fit_epochs` an `EpochTrainer`: `train_epoch` (one pass over the data, returning its
loss), `validate` (metrics on validation data, or {}), `state_dict`/`load_state_dict` (everything the
next epoch depends on: weights, optimizer, schedule) and `weights`/`load_weights` (what early stopping
keeps). The loop owns the rest, the same for every model:

- device placement (`TrainOptions.device`: "cpu", "cuda", "cuda:1", "auto"); the trainer moves its
  modules and moves each batch; the fitted model comes back on the CPU, where scoring and artifacts live;
- seeding: torch's global generator (dropout, initialisation) and a data-order generator it passes in;
- data-parallel training under torchrun: every rank builds the same global batches and takes its share
  (`EpochContext.parallel`); gradients are averaged by one all-reduce per step (`sync_gradients`);
- early stopping on a named validation metric, its direction from `recforge.evaluation.metrics`
  (valid_rmse: lower is better; valid_ndcg@10, top10_accuracy: higher), restoring the best weights;
- per-epoch checkpoints and resume (`recforge.nn.checkpoint`): a killed run continues where it stopped;
- a progress bar in a terminal, and an INFO log line per epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from recforge._progress import progress_bar
from recforge.errors import ConfigError, TrainingDivergedError
from recforge.evaluation.metrics import better, direction
from recforge.nn.checkpoint import Checkpointer, restore_rng, rng_state
from recforge.nn.distributed import DistributedContext

logger = logging.getLogger(__name__)

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
    n_epochs = max(n_epochs, 1)  # a model may train 0 epochs (its weights found in closed form)
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
    """'auto' picks CUDA when available, else CPU; 'cuda...' without CUDA is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this torch has no CUDA device; use 'cpu' or 'auto'")
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator (dropout, init) and return a generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class EpochContext:
    """What `train_epoch` gets: the epoch number, the data-order generator, the distributed context and
    the device batches go to."""

    epoch: int
    generator: torch.Generator
    parallel: DistributedContext
    device: torch.device


@dataclass(frozen=True)
class EpochPlan:
    """How long to train and what to watch: `monitor` names a metric `validate` returns (its direction
    comes from the metric table), checked every `eval_every` epochs; `patience` evaluations without a
    gain stop training (None: never stop early)."""

    n_epochs: int
    monitor: str | None = None
    patience: int | None = None
    eval_every: int = 1
    description: str = "training"
    min_delta: float = 1e-5


class EpochTrainer(Protocol):
    def to(self, device: torch.device) -> None: ...

    def train_epoch(self, context: EpochContext) -> dict[str, float]: ...

    def validate(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def weights(self) -> dict[str, torch.Tensor]: ...

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None: ...


class EarlyStopping:
    """Tracks the monitored metric, keeps the best weights, and says when to stop."""

    def __init__(self, monitor: str | None, patience: int | None, min_delta: float = 1e-5) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stale = 0

    def update(self, value: float, epoch: int, weights: dict[str, torch.Tensor]) -> bool:
        """Record this evaluation; returns True when training should stop."""
        assert self.monitor is not None
        lower = direction(self.monitor) == "min"
        margin = -self.min_delta if lower else self.min_delta
        if self.best is None or better(self.monitor, value, self.best + margin):
            self.best, self.best_epoch, self.stale = value, epoch, 0
            self.best_weights = {k: v.detach().clone() for k, v in weights.items()}
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience

    def state(self) -> dict[str, Any]:
        """Plain-container state for checkpoints."""
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale, "best_state": self.best_weights}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.stale = state["best"], state["best_epoch"], state["stale"]
        self.best_weights = state["best_state"]


def fit_epochs(
    trainer: EpochTrainer,
    plan: EpochPlan,
    options: Any,
    checkpoints: Checkpointer | None = None,
) -> list[dict[str, float]]:
    """Train `trainer` for `plan.n_epochs` epochs under `options` (a `TrainOptions`); returns the training
    log (one entry per epoch: loss and validation metrics). The best weights by `plan.monitor` are loaded
    back at the end when the trainer validated anything."""
    device = resolve_device(options.device)
    generator = seed_everything(options.seed)
    parallel = DistributedContext.from_environment(device)
    trainer.to(device)
    stopper = EarlyStopping(plan.monitor, plan.patience, plan.min_delta)
    log: list[dict[str, float]] = []
    first, stop = 1, False
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        stopper.load_state(saved["stopper"])
        restore_rng(saved, generator)
        log, first, stop = list(saved["log"]), saved["epoch"] + 1, saved["stopped"]
        logger.info("%s: resumed from %s after epoch %d", plan.description, options.checkpoint_dir, saved["epoch"])
    shown = options.progress and parallel.is_main and plan.n_epochs > 0  # a closed-form fit has no epochs to show
    with progress_bar(plan.description, plan.n_epochs, enabled=shown) as bar:
        bar.advance(first - 1)
        for epoch in range(first, plan.n_epochs + 1):
            if stop:
                break
            context = EpochContext(epoch, generator, parallel, device)
            entry: dict[str, float] = {"epoch": epoch, **trainer.train_epoch(context)}
            if not math.isfinite(entry.get("loss", 0.0)):
                raise TrainingDivergedError(
                    f"{plan.description}: the training loss became {entry['loss']} at epoch {epoch}; "
                    "lower the learning rate"
                )
            if plan.monitor is not None and epoch % plan.eval_every == 0:
                metrics = trainer.validate()
                if metrics:
                    entry.update(metrics)
                    stop = stopper.update(metrics[plan.monitor], epoch, trainer.weights())
            log.append(entry)
            logger.info("%s epoch %d: %s", plan.description, epoch, entry)
            if getattr(options, "on_epoch", None) is not None:
                options.on_epoch(epoch, entry)
            if checkpoints is not None and parallel.is_main:
                checkpoints.save(
                    epoch,
                    {
                        "trainer": trainer.state_dict(),
                        "stopper": stopper.state(),
                        "log": log,
                        "stopped": stop,
                        **rng_state(generator),
                    },
                )
            parallel.barrier()
            bar.advance(**{k: v for k, v in entry.items() if k != "epoch"})
    if stopper.best_weights is not None:
        trainer.load_weights(stopper.best_weights)
    trainer.to(torch.device("cpu"))
    return log
