"""Long `compare` runs: plain progress lines without a terminal, each finished model kept as it
finishes, Ctrl-C leaves a valid partial report, and `--resume` ends with the report an uninterrupted
run writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

CONFIG = """
name = "long-run"
seed = 3
[dataset]
name = "ml-100k"
[split]
kind = "per_user"
test_fraction = 0.2
[evaluation]
protocols = ["ranking"]
ks = [5, 20]
[[models]]
model = "ials"
params = { n_iterations = 5 }
[[models]]
model = "bpr"
params = { n_epochs = 40 }
[[models]]
model = "ease"
"""


def _compare(config: Path, output: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "recforge.cli", "compare", str(config), "--output", str(output), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # one thread: the thread count otherwise follows the machine's load at each fit, and a parallel
        # reduction's last bits with it (recforge.threads), while the test compares resumed and fresh runs byte
        # for byte
        env={**os.environ, "COLUMNS": "200", "RECFORGE_THREADS": "1"},
        preexec_fn=_interruptible,
    )


def _interruptible() -> None:
    """Ctrl-C back to its default in the child: a test run started in the background (`cmd &` in a script)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _comparable(folder: Path) -> tuple[bytes, pd.DataFrame]:
    results = pd.read_parquet(folder / "results.parquet").drop(columns="fit_seconds")
    return (folder / "metrics.json").read_bytes(), results


@pytest.mark.slow
def test_compare_reports_progress_keeps_finished_models_and_resumes(tmp_path, data_dir):
    config = tmp_path / "long.toml"
    config.write_text(CONFIG)
    output = tmp_path / "interrupted"

    process = _compare(config, output)
    lines = []
    assert process.stderr is not None
    started = time.monotonic()
    for line in process.stderr:  # plain, timestamped lines arrive while it runs (no terminal here)
        lines.append(line)
        if "BPR: started" in line:
            process.send_signal(signal.SIGINT)  # most_popular and ials are done, bpr is training
            break
        assert time.monotonic() - started < 300, lines
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stdout + stderr
    assert any("experiment long-run: working on" in line and "model=ials" in line for line in lines), lines
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines), lines  # timestamped
    partial = json.loads((output / "metrics.json").read_text())
    assert partial["interrupted"] is True
    assert [run["model"] for run in partial["runs"]] == ["most_popular", "ials"]
    assert "stopped before every model had run" in (output / "report.md").read_text()
    assert "--resume" in stdout

    resumed = _compare(config, output, "--resume")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stdout + stderr
    assert "iALS: started" not in stderr  # read back, not refitted
    assert "BPR: started" in stderr
    for k in ("ndcg@5", "ndcg@20", "precision@20"):  # the summary shows the requested ks
        assert k in stdout

    fresh = tmp_path / "uninterrupted"
    whole = _compare(config, fresh)
    stdout, stderr = whole.communicate(timeout=600)
    assert whole.returncode == 0, stdout + stderr
    resumed_metrics, resumed_results = _comparable(output)
    fresh_metrics, fresh_results = _comparable(fresh)
    assert resumed_metrics == fresh_metrics
    pd.testing.assert_frame_equal(resumed_results, fresh_results)
    assert "interrupted" not in json.loads(resumed_metrics)


def test_resume_refuses_runs_of_another_config(tmp_path, data_dir):
    from recforge.errors import ConfigError
    from recforge.evaluation.run_store import RunStore

    RunStore(tmp_path / "runs", "a" * 64, resume=False)
    with pytest.raises(ConfigError, match="another config"):
        RunStore(tmp_path / "runs", "b" * 64, resume=True)
    RunStore(tmp_path / "runs", "b" * 64, resume=False)  # a fresh run starts over
