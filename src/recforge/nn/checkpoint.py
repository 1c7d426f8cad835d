"""Per-epoch training checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint holds everything the next epoch depends on: module and optimizer (and scheduler) state,
the data-order generator and torch's global RNG (dropout), the epoch, the training log and the early-
stopping state. Resuming therefore continues the same trajectory: a run killed after epoch e and resumed
ends with the same weights as an uninterrupted run with the same seed (tested).

Format: `checkpoint.pt` written with `torch.save` and read with `torch.load(weights_only=True)`, which
accepts only tensors and plain containers (no code runs on load); `checkpoint.json` repeats the epoch,
the model name and a fingerprint of config + training data, so a resume against other data or another
config is refused instead of silently mixing runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from recforge._io import atomic_path
from recforge.errors import ConfigError

STATE_FILE = "checkpoint.pt"
INFO_FILE = "checkpoint.json"


def run_fingerprint(model_name: str, config: dict[str, Any], data_fingerprint: str, seed: int) -> str:
    payload = json.dumps(
        {"model": model_name, "config": config, "data": data_fingerprint, "seed": seed}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class Checkpointer:
    """`save(epoch, state)` after each epoch; `load()` returns the last state (or None)."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    @classmethod
    def for_fit(cls, model: Any, train: Any, options: Any) -> Checkpointer | None:
        """The checkpointer of `model.fit(train, options)`, or None when options ask for no checkpoints."""
        if options.checkpoint_dir is None:
            return None
        fingerprint = run_fingerprint(model.name, model.config.model_dump(), train.fingerprint(), options.seed)
        return cls(options.checkpoint_dir, fingerprint)

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / STATE_FILE) as tmp:
            torch.save({**state, "epoch": epoch}, tmp)
        info = {"epoch": epoch, "fingerprint": self.fingerprint}
        with atomic_path(self.folder / INFO_FILE) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")

    def load(self) -> dict[str, Any] | None:
        info_path, state_path = self.folder / INFO_FILE, self.folder / STATE_FILE
        if not info_path.exists() or not state_path.exists():
            return None
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"{self.folder}: this checkpoint belongs to another run (different model, config, data or seed); "
                "use another checkpoint folder or delete it"
            )
        state = torch.load(state_path, weights_only=True)
        if state.get("epoch") != info["epoch"]:
            raise ConfigError(f"{self.folder}: checkpoint.pt and checkpoint.json disagree on the epoch")
        return state


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"data_rng": generator.get_state(), "torch_rng": torch.get_rng_state()}


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
