"""Data-parallel training with torch.distributed (DistributedDataParallel), launched by `torchrun`.

Every rank builds the same global batch sequence (same seed, same data), takes its share of each global
batch (`local_rows`), and scales its mean loss so that DDP's gradient average equals the gradient of the
global batch's mean loss (`loss_scale`): with deterministic losses (SASRec with cross-entropy and no
dropout) N processes follow the single-process trajectory up to float summation order. Losses with
sampled negatives or dropout draw different random numbers per shard, so they match in distribution,
not step by step. Backend: gloo on CPU, NCCL when the model trains on CUDA. Outside torchrun (no
WORLD_SIZE in the environment) everything here is a no-op with world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: Any = "cpu") -> DistributedContext:
        """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT), once."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or not dist.is_available():
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    def local_rows(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of n rows (all rows if n < world size)."""
        if not self.enabled or n < self.world_size:
            return slice(0, n)
        bounds = torch.linspace(0, n, self.world_size + 1).round().long().tolist()
        return slice(bounds[self.rank], bounds[self.rank + 1])

    def loss_scale(self, local_weight: float, global_weight: float, n: int) -> float:
        """Factor for this rank's mean loss over `local_weight` examples so that the DDP-averaged gradient
        is the gradient of the mean over all `global_weight` examples of the global batch (of n rows)."""
        if not self.enabled or n < self.world_size:
            return 1.0  # every rank computed the same full batch; the average is that batch's gradient
        return local_weight * self.world_size / max(global_weight, 1e-12)

    def sync_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average gradients over ranks before an optimizer step (what DDP does in backward), done
        explicitly so it works for any model, however its loss calls its modules: one flat buffer, missing
        gradients as zeros, so every rank takes part in the same collective even when a step leaves a
        parameter unused. A no-op outside torchrun."""
        if not self.enabled:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in parameters:
            size = p.numel()
            p.grad = flat[offset : offset + size].view_as(p).clone()
            offset += size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
