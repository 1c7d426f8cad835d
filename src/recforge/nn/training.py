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


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
