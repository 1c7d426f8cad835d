"""Per-epoch training checkpoints: one safetensors file, written atomically, read without unpickling.

A checkpoint holds everything the next epoch depends on: module and optimizer (and scheduler) state,
the data-order generator and torch's global RNG (dropout), the epoch, the training log and the early-
stopping state. Resuming therefore continues the same trajectory: a run killed after epoch e and resumed
ends with the same weights as an uninterrupted run with the same seed (tested).

Format: `checkpoint.safetensors`. Its tensors are the state's tensors, named by their path in the state
("optimizer/state/0/exp_avg"); its metadata holds the epoch, a fingerprint of model + config + training
data + seed, and the state's structure as JSON with every tensor replaced by its name. Optimizer states
key parameters by integer, so the structure records dicts as key/value pairs and keeps key types. Reading
parses a fixed binary layout and JSON: no code runs on load (the project never unpickles files). One file
written by one rename means a killed run leaves the previous checkpoint or the new one, never a mix; a
resume against other data, another config or seed is refused instead of silently mixing runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize

from recforge._io import atomic_path
from recforge.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "recforge-checkpoint/1"


def run_fingerprint(model_name: str, config: dict[str, Any], data_fingerprint: str, seed: int) -> str:
    payload = json.dumps(
        {"model": model_name, "config": config, "data": data_fingerprint, "seed": seed}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class Checkpointer:
    """`save(epoch, state)` after each epoch; `load()` returns the last state (or None)."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    @classmethod
    def for_fit(cls, model: Any, train: Any, options: Any) -> Checkpointer | None:
        """The checkpointer of `model.fit(train, options)`, or None when options ask for no checkpoints."""
        if options.checkpoint_dir is None:
            return None
        fingerprint = run_fingerprint(model.name, model.config.model_dump(), train.fingerprint(), options.seed)
        return cls(options.checkpoint_dir, fingerprint)

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """State: nested dicts / lists / tuples of tensors, numbers, strings, booleans and None."""
        tensors: dict[str, torch.Tensor] = {}
        structure = _encode(state, "", tensors)
        metadata = {"format": FORMAT, "epoch": str(epoch), "fingerprint": self.fingerprint}
        metadata["structure"] = json.dumps(structure, allow_nan=True)
        payload = serialize(tensors, metadata=metadata)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(payload)

    def epoch(self) -> int | None:
        """The epoch of the checkpoint on disk (reads only its header), or None when there is none."""
        if not self.path.exists():
            return None
        return int(self._metadata()["epoch"])

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        metadata = self._metadata()
        if metadata.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"{self.path}: this checkpoint belongs to another run (different model, config, data or seed); "
                "use another checkpoint folder or delete it"
            )
        try:
            tensors = load_file(self.path)
            state = _decode(json.loads(metadata["structure"]), tensors)
        except (SafetensorError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path}: unreadable checkpoint ({exc}); delete it to start over") from exc
        return {**state, "epoch": int(metadata["epoch"])}

    def _metadata(self) -> dict[str, str]:
        try:
            with safe_open(self.path, framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"{self.path}: not a recforge checkpoint ({exc}); delete it to start over") from exc
        if metadata.get("format") != FORMAT or "epoch" not in metadata or "structure" not in metadata:
            raise ConfigError(f"{self.path}: not a recforge checkpoint (format {metadata.get('format')!r})")
        return metadata


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able structure of `value`; tensors move to `tensors` under their path and leave a reference."""
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ConfigError(f"checkpoint state has two tensors at {path} (a key containing '/')")
        # a private contiguous copy: safetensors refuses views and tensors that share storage (tied weights)
        tensors[path] = value.detach().to("cpu", copy=True).contiguous()
        return {"tensor": path}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ConfigError(f"checkpoint state key {key!r} at {path or '/'} is not a string or an integer")
        return {"dict": [[key, _encode(item, f"{path}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_encode(item, f"{path}/{i}", tensors) for i, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise ConfigError(f"checkpoint state at {path or '/'} holds a {type(value).__name__}, which is not saved")


def _decode(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    (kind, content), *rest = node.items()
    if rest:
        raise ValueError(f"malformed structure node {node!r}")
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: _decode(item, tensors) for key, item in content}
    if kind == "list":
        return [_decode(item, tensors) for item in content]
    if kind == "tuple":
        return tuple(_decode(item, tensors) for item in content)
    if kind == "value":
        return content
    raise ValueError(f"unknown structure node {kind!r}")


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"data_rng": generator.get_state(), "torch_rng": torch.get_rng_state()}


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
