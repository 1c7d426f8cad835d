"""How many CPU threads recforge computes with, and a context manager that sets and restores them.

Why a policy at all: on a busy machine (a notebook beside other jobs, CI, two experiments at once) a
thread pool as wide as the machine collapses. Every parallel region of a fine-grained fit (an SGD step
of MF or BPR is a few hundred microseconds of work) waits until *all* its threads are scheduled, and
OpenMP threads that spin while waiting take the CPU from the very thread the region is waiting for.
Measured on 2 cores with two CPU-bound processes beside the fit (benchmarks/results/threads.md):
explicit MF took 1.7-34 s at torch's default two spinning threads and 0.6 s at one thread.

The policy (`TrainOptions.threads = None`, the default):
1. An explicit count wins: `threads=n`, else the `RECFORGE_THREADS` environment variable, else
   `OMP_NUM_THREADS` (the user has already decided for every OpenMP program).
2. Otherwise the fit uses the cores that are free when it starts: the cores this process may run on
   (affinity and cgroup quota) minus those other processes kept busy over a short sample of
   /proc/stat, rounded, at least one. An idle machine gets all its cores; a busy one gets one.
3. A model whose steps are too small to split profitably caps the count (`Recommender.max_threads`):
   explicit MF's SGD steps gained nothing from a second core on an idle machine (0.14-0.33 s at two
   threads, bimodal between processes, vs 0.21-0.26 s at one), so it uses one unless told otherwise.
4. OpenMP threads wait by spinning only briefly (`GOMP_SPINCOUNT` = 10,000 instead of libgomp's 300,000,
   set at `import recforge` unless the user set it, and only effective when recforge is imported before
   torch). Load that arrives after a fit chose its threads meets short spins: with two threads and two
   CPU-bound neighbours MF took 0.6-0.9 s at 1,000-10,000 spins and 33 s at 100,000-300,000; on an idle
   machine 10,000 spins were as fast as 300,000 (MF, iALS, BPR, SASRec within noise), 1,000 slower for MF.

`thread_limit(n)` applies a count to torch's intra-op pool, numba's parallel loops and the BLAS pools
of numpy/scipy (threadpoolctl) for the duration of a block, and restores the previous counts afterwards, so a fit with
`threads=1` does not leave the process single-threaded. Floating-point results can differ in their
last bits between thread counts (parallel reductions sum in another order): pin `threads` for
bit-for-bit reproducible runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

THREADS_ENV = "RECFORGE_THREADS"
SPIN_COUNT = "10000"  # libgomp's default is 300,000 spins before a waiting thread sleeps

_cache_lock = threading.Lock()
_cached: tuple[float, float] | None = None  # (monotonic time, free cores)
CACHE_SECONDS = 2.0


def quiet_openmp_spinning() -> None:
    """Shorten OpenMP's spin-wait unless the user chose a value (must run before torch is imported)."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)  # GNU OpenMP (torch's pip wheels)
    os.environ.setdefault("KMP_BLOCKTIME", "1")  # Intel OpenMP (conda MKL builds), in milliseconds


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup CPU quota where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPU quota in cores from cgroup v2 (cpu.max) or v1 (cfs_quota_us / cfs_period_us), or None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _system_ticks() -> tuple[int, int, int] | None:
    """(busy, total, n_cpus) jiffies summed over all CPUs, from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    n_cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return total - idle, total, max(1, n_cpus)


def _own_ticks() -> int:
    """User + system jiffies of this process (all its threads), from /proc/self/stat."""
    text = Path("/proc/self/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces: skip past ')'
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the full line)


def busy_elsewhere(window: float = 0.05) -> float | None:
    """Cores kept busy by *other* processes over `window` seconds (None where /proc is unavailable)."""
    try:
        before, own_before = _system_ticks(), _own_ticks()
        time.sleep(window)
        after, own_after = _system_ticks(), _own_ticks()
    except (OSError, ValueError, IndexError):
        return None
    if before is None or after is None or after[1] <= before[1]:
        return None
    n_cpus = after[2]
    wall = (after[1] - before[1]) / n_cpus  # jiffies of wall time in the window
    others = (after[0] - before[0]) - (own_after - own_before)
    return max(0.0, others / wall)


def free_cores() -> float:
    """Usable cores minus those busy with other processes (sampled at most every CACHE_SECONDS)."""
    global _cached
    with _cache_lock:
        now = time.monotonic()
        if _cached is not None and now - _cached[0] < CACHE_SECONDS:
            return _cached[1]
        usable = usable_cores()
        busy = busy_elsewhere()
        if busy is None and hasattr(os, "getloadavg"):
            busy = max(0.0, os.getloadavg()[0] - 1.0)  # the 1-minute average includes this process
        free = usable - (busy or 0.0)
        _cached = (now, free)
        return free


def explicit_threads() -> int | None:
    """A thread count the user fixed through the environment (RECFORGE_THREADS, else OMP_NUM_THREADS)."""
    for variable in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "").strip()
        if value:
            try:
                count = int(value.split(",")[0])
            except ValueError:
                continue
            if count >= 1:
                return count
    return None


def choose_threads(requested: int | None = None, useful: int | None = None) -> int:
    """The thread count for one fit: `requested`, the environment's, or the free cores (at least 1),
    capped at `useful` (what the work can use) when the count is chosen automatically."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return requested
    fixed = explicit_threads()
    if fixed is not None:
        return fixed
    if useful == 1:
        return 1  # no need to sample the machine
    count = max(1, min(usable_cores(), math.floor(free_cores() + 0.5)))
    return count if useful is None else max(1, min(count, useful))


@contextlib.contextmanager
def thread_limit(threads: int | None = None, useful: int | None = None) -> Iterator[int]:
    """Run a block with `choose_threads(threads, useful)` torch and BLAS threads; restore both afterwards.

    Yields the count in use. torch is only touched if it is already imported (a numpy-only fit stays
    light).
    """
    import sys

    count = choose_threads(threads, useful)
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch is not None else None
    if torch is not None and previous != count:
        torch.set_num_threads(count)
    numba = sys.modules.get("numba")  # the compiled loops of iALS, ALS and Bayesian MF
    previous_numba = numba.get_num_threads() if numba is not None else None
    if numba is not None:
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limiter = contextlib.nullcontext()
    else:
        limiter = threadpool_limits(limits=count, user_api="blas")
    try:
        with limiter:
            yield count
    finally:
        if previous_numba is not None:
            numba.set_num_threads(previous_numba)
        torch = sys.modules.get("torch")
        if torch is not None:
            if previous is None:  # torch was imported inside the block: give it back its own default
                previous = _torch_default_threads()
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)


def _torch_default_threads() -> int:
    fixed = explicit_threads()
    return fixed if fixed is not None else usable_cores()


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Treat denormal floats as zero in torch while a fit runs on CPU (a no-op when torch is not loaded).

    Regularised factors drift towards zero; once values turn denormal, every multiply on them is
    ~100x slower on x86 (a 40-epoch MF fit took 1.4 s instead of 0.48 s on ML-100K). Results are
    unaffected at float32 precision. The setting is process-wide in torch, so it is restored after.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
