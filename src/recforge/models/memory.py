"""Checking, before a fit allocates, that a dense pairwise model fits in memory.

EASE, SLIM and the explicit (KNNBaseline) neighbourhood models hold n² numbers for n items (or users, for
user KNN; the implicit ones keep n·k, `recforge.models.knn.nearest_neighbours`); at 100,000
items that is hundreds of GB. Without a check such a fit dies with the kernel's OOM killer (no message at
all) or a bare `MemoryError` minutes in. Their memory is known before the first allocation, so `fit`
compares its estimate with what this process can still get and refuses with the numbers and the ways out.
The time-decayed Gram matrix built sparse (for SLIM's `neighbours`) has no such bound up front: its sums
are checked as they grow, against what finishing them takes (`require_memory`).

What the process can get is the smallest of: the system's MemAvailable, the headroom under its cgroup's
memory limit (containers, v1 or v2) and the headroom under its address-space limit (`ulimit -v`). Swap is
not counted. The estimates are of the big arrays only (lower bounds on the fit's peak), so a refusal
means the fit could not have finished; `RECFORGE_MEMORY_CHECK=off` skips the check.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from recforge.errors import InsufficientMemoryError

_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge page-rounded number
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def require_pairwise_memory(
    model: str, n: int, bytes_per_pair: float, kind: str = "item", extra: int = 0, instead: str = ""
) -> None:
    """Refuse a fit whose n x n `kind`-`kind` arrays (`bytes_per_pair` bytes per pair at the fit's peak,
    measured, plus `extra` bytes) need more memory than the process can get: `InsufficientMemoryError`.
    `instead` names the model's own way out, if it has one."""
    require_memory(
        model,
        int(bytes_per_pair * n * n) + extra,
        f"the dense {n:,} x {n:,} {kind}-{kind} matrices",
        f"{instead + ', ' if instead else ''}keep fewer {kind}s (the filter_{kind}_counts step, "
        "`recforge.data.preprocess`) or use a factor model (ials, mf, bpr), whose memory grows linearly",
    )


def require_memory(model: str, needed: int, what: str, ways_out: str) -> None:
    """Refuse with `InsufficientMemoryError` when `what` needs more than the `needed` bytes this process can
    still get, naming `ways_out`."""
    if os.environ.get("RECFORGE_MEMORY_CHECK", "").lower() in {"off", "0", "false", "no"}:
        return
    available = available_bytes()
    if available is None or needed <= available:
        return
    raise InsufficientMemoryError(
        f"{model}: {what} need at least {_gigabytes(needed)} of memory and this process can get "
        f"{_gigabytes(available)}; {ways_out} (RECFORGE_MEMORY_CHECK=off skips this check)"
    )


def available_bytes() -> int | None:
    """Bytes this process can still allocate without swapping (None where the platform does not say)."""
    limits = [_meminfo_available(), _cgroup_headroom(), _address_space_headroom()]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_headroom(root: Path = _CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """The least headroom under a memory limit of the process's cgroup or one of its ancestors, v2
    (memory.max) or v1 (memory/memory.limit_in_bytes): limit − usage + the inactive page cache
    (reclaimable, as MemAvailable counts it). None where no cgroup sets a limit."""
    headrooms = [room for room in map(_headroom, _cgroup_directories(root, membership)) if room is not None]
    return min(headrooms) if headrooms else None


def _headroom(directory: Path) -> int | None:
    if (directory / "memory.max").is_file():  # v2
        limit, usage, cache_key = directory / "memory.max", directory / "memory.current", "inactive_file"
    elif (directory / "memory.limit_in_bytes").is_file():  # v1
        limit, usage = directory / "memory.limit_in_bytes", directory / "memory.usage_in_bytes"
        cache_key = "total_inactive_file"
    else:
        return None
    try:
        limit_text = limit.read_text().strip()
        if limit_text == "max" or int(limit_text) >= _UNLIMITED:
            return None
        used = int(usage.read_text().strip())
    except (OSError, ValueError):
        return None
    return max(int(limit_text) - used + _stat_value(directory / "memory.stat", cache_key), 0)


def _cgroup_directories(root: Path, membership: Path) -> list[Path]:
    """The process's memory cgroup directories and their ancestors up to the mount (inside a container's
    cgroup namespace the mount's root is the container's own cgroup), v2's and v1's."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    directories = {root, root / "memory"}
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2's unified hierarchy
            mount = root
        elif "memory" in controllers.split(","):
            mount = root / "memory"
        else:
            continue
        directory = mount / path.lstrip("/")
        directories.update([directory, *(parent for parent in directory.parents if mount in parent.parents)])
    return sorted(directories)


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _address_space_headroom(status: Path = Path("/proc/self/status")) -> int | None:
    """The soft RLIMIT_AS (`ulimit -v`) less the address space already mapped; None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(soft - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError):
        pass
    return None


def _gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"
