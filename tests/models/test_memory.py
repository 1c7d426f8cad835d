"""The dense pairwise models refuse, before allocating, a fit that cannot fit in memory: the cgroup and
address-space limits are read as the kernel enforces them, and a real `ulimit -v` turns what would be a
bare MemoryError (or the OOM killer) into a message with the numbers and the way out."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recforge.errors import InsufficientMemoryError
from recforge.models import create_model, memory
from recforge.models.config import TrainOptions

GiB = 2**30


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_headroom_is_limit_less_usage_plus_inactive_cache(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", "max\n")  # the mount's root: no limit
    write(tmp_path / "app" / "memory.max", f"{2 * GiB}\n")
    write(tmp_path / "app" / "memory.current", f"{GiB + 300}\n")
    write(tmp_path / "app" / "memory.stat", "anon 123\ninactive_file 1000\nactive_file 99\n")
    write(tmp_path / "self_cgroup", "0::/app\n")
    assert memory._cgroup_headroom(tmp_path, tmp_path / "self_cgroup") == GiB - 300 + 1000


def test_cgroup_v1_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    v1 = tmp_path / "memory"
    write(v1 / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    write(v1 / "memory.usage_in_bytes", "5\n")
    write(v1 / "docker" / "memory.limit_in_bytes", f"{GiB}\n")
    write(v1 / "docker" / "memory.usage_in_bytes", f"{GiB - 100}\n")
    write(v1 / "docker" / "box" / "memory.limit_in_bytes", f"{4 * GiB}\n")
    write(v1 / "docker" / "box" / "memory.usage_in_bytes", f"{GiB}\n")
    write(v1 / "docker" / "box" / "memory.stat", "total_inactive_file 20\n")
    write(tmp_path / "self_cgroup", "4:memory:/docker/box\n1:cpu:/elsewhere\n")
    assert memory._cgroup_headroom(tmp_path, tmp_path / "self_cgroup") == 100  # the parent's, not 3 GiB + 20


def test_no_cgroup_limit_is_no_headroom_bound(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", "max\n")
    write(tmp_path / "self_cgroup", "0::/\n")
    assert memory._cgroup_headroom(tmp_path, tmp_path / "self_cgroup") is None
    assert memory._cgroup_headroom(tmp_path / "absent", tmp_path / "absent_file") is None


def test_this_process_can_get_a_plausible_amount() -> None:
    # bounded by the machine's total, not by a second reading of MemAvailable: other test workers allocate
    # and free between two readings, which made `available <= MemAvailable now` fail now and then
    lines = Path("/proc/meminfo").read_text().splitlines()
    total = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemTotal:"))
    available = memory.available_bytes()
    assert available is not None and 0 < available <= total


@pytest.mark.parametrize(
    ("model", "params", "kind", "n_attribute"),
    [
        ("ease", {}, "item-item", "n_items"),
        ("slim", {}, "item-item", "n_items"),
        ("item_knn", {}, "item-item", "n_items"),
        ("user_knn", {}, "user-user", "n_users"),
    ],
)
def test_a_fit_that_does_not_fit_is_refused_with_its_numbers(
    ml100k, monkeypatch: pytest.MonkeyPatch, model: str, params: dict, kind: str, n_attribute: str
) -> None:
    monkeypatch.delenv("RECFORGE_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2_000_000)  # 1.9 MiB: ML-100K needs more
    n = getattr(ml100k, n_attribute)
    with pytest.raises(InsufficientMemoryError) as refused:
        create_model(model, **params).fit(ml100k, TrainOptions(seed=0))
    message = str(refused.value)
    assert message.startswith(f"{model}: the dense {n:,} x {n:,} {kind} matrices need at least")
    assert "can get 0.0 GiB" in message and "filter_" in message and "ials" in message
    assert ("set neighbours" in message) == (model == "slim")  # SLIM's own way out: fsSLIM
    monkeypatch.setenv("RECFORGE_MEMORY_CHECK", "off")
    assert create_model("ease").fit(ml100k, TrainOptions(seed=0)).n_items == ml100k.n_items


def test_under_a_real_address_space_limit_the_refusal_comes_before_any_allocation(tmp_path: Path) -> None:
    """`ulimit -v` at 160 MiB above what the process has mapped: EASE on 4,000 items (~190 MB at its
    float32 peak) is refused by the check, one on 1,000 items still fits, and nothing raised a bare
    MemoryError (without the check: torch's "can't allocate memory")."""
    script = textwrap.dedent(
        """
        import resource
        import numpy as np, pandas as pd, torch  # mapped before the limit
        from recforge.data.interactions import Interactions
        from recforge.errors import InsufficientMemoryError
        from recforge.models import create_model
        from recforge.models.config import TrainOptions

        def catalogue(n_items):
            rng = np.random.default_rng(0)
            users = np.repeat(np.arange(2000), 30)
            frame = pd.DataFrame({"user_id": users, "item_id": rng.integers(0, n_items, len(users))})
            frame.loc[: n_items - 1, "item_id"] = np.arange(n_items)  # every item taken once
            return Interactions.from_frame(frame.drop_duplicates())

        big, small = catalogue(4000), catalogue(1000)
        torch.linalg.cholesky(torch.eye(8, dtype=torch.float64))  # its threads started before the limit
        mapped = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 160 * 2**20, resource.RLIM_INFINITY))
        try:
            create_model("ease").fit(big, TrainOptions(seed=0))
        except InsufficientMemoryError as exc:
            print("refused:", exc)
        print("fitted", create_model("ease").fit(small, TrainOptions(seed=0)).n_items)
        """
    )
    environment = {name: value for name, value in os.environ.items() if name != "RECFORGE_MEMORY_CHECK"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    assert "refused: ease: the dense 4,000 x 4,000 item-item matrices need at least 0.2 GiB" in done.stdout
    assert "fitted 1000" in done.stdout


def test_a_sparse_time_decayed_gram_that_outgrows_memory_is_refused_while_summing(
    ml100k, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsSLIM's time-decayed Gram matrix has no n² bound to check up front; its sums are checked as they
    grow, against what finishing them takes (S's transpose and S + Sᵀ)."""
    monkeypatch.delenv("RECFORGE_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2_000_000)
    with pytest.raises(InsufficientMemoryError) as refused:
        create_model("slim", neighbours=50, time_decay=50.0).fit(ml100k, TrainOptions(seed=0))
    message = str(refused.value)
    assert message.startswith("time-decayed Gram matrix: the ") and "item pairs summed so far" in message
    assert "lower time_decay" in message
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**40)
    assert create_model("slim", neighbours=50, time_decay=50.0).fit(ml100k, TrainOptions(seed=0)).weights_.nnz > 0
