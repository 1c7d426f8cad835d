"""What neural and gradient-trained models share: optimizer construction, seeding, device choice."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

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


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero while training on CPU.

    Regularised factors drift towards zero; once values turn denormal, every multiply on them is
    ~100x slower on x86 (a 40-epoch MF fit took 1.4 s instead of 0.48 s on ML-100K). Results are
    unaffected at float32 precision. The setting is process-wide in torch, so it is restored after.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
