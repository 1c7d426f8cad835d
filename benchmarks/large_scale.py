"""Large synthetic data: generation, the end-to-end in-memory pipeline, fit time vs implicit, Spark local.

Data: `recforge.data.synthetic` (power-law popularity, genre-shaped latent tastes, timestamps) shaped like
MovieLens 20M at 20M events (138,000 users x 27,000 items), written once to Parquet under
`$RECFORGE_BENCH_DIR` (default ~/.cache/recforge/bench). Every stage runs in its own process, so "peak
RSS" is that stage's own high-water mark: the process and its children (Spark: the driver, its JVM and
Python workers), sampled every 0.1 s.

Stages:
- `e2e`: load Parquet -> deduplicate, keep users and items with >= 5 events -> per-user 80/20 split
  (seed 0) -> iALS (64 factors, 15 iterations, CG) -> full-catalogue top-10 for every test user with
  training items excluded -> NDCG@10 / Recall@10. Target at 20M: under 10 minutes, peak RSS under 6 GB.
- `fit:<name>`: fit time and peak RSS on the same prepared training matrix: recforge `ials`, implicit's
  AlternatingLeastSquares at equal settings (64 factors, 15 iterations, CG, regularization, alpha),
  recforge `mf` (biased SGD, 64 factors, 15 epochs) on the ratings.
- `prepare` / `spark`: the preparation recipe (the e2e steps, stratified 80/20 split, genre features,
  user taste profiles; `recforge.data.prepare`) in memory and on Spark local mode (2 cores), load to
  written output.

Run: `python -m benchmarks.large_scale [--sizes 1M,20M] [--stages e2e,fit:ials,fit:implicit,fit:mf,prepare,spark]`;
`--generate-only 100M` writes the 100M file. Writes results/large_scale.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import markdown_table, write_results

SHAPES = {  # events: (users, items)
    "1M": (1_000_000, 6_040, 3_700),
    "20M": (20_000_000, 138_000, 27_000),
    "100M": (100_000_000, 690_000, 135_000),
}


def bench_dir() -> Path:
    return Path(os.environ.get("RECFORGE_BENCH_DIR", Path.home() / ".cache" / "recforge" / "bench"))


def dataset(size: str) -> Path:
    from recforge.data.synthetic import SyntheticConfig, write_synthetic

    folder = bench_dir() / f"synthetic-{size}"
    if not (folder / "events.parquet").exists():
        n, users, items = SHAPES[size]
        started = time.perf_counter()
        write_synthetic(SyntheticConfig(n_users=users, n_items=items, n_interactions=n), folder)
        print(f"generated {size} in {time.perf_counter() - started:.1f} s -> {folder}", file=sys.stderr)
    return folder


STEPS = [
    {"step": "deduplicate"},
    {"step": "filter_user_counts", "min_count": 5},
    {"step": "filter_item_counts", "min_count": 5},
]


def _load_and_prepare(size: str, timings: dict):
    from recforge.data.loaders import load_table
    from recforge.data.preprocess import preprocess
    from recforge.data.splits import per_user_split

    started = time.perf_counter()
    data = load_table(
        dataset(size) / "events.parquet", user="user_id", item="item_id", rating="rating", timestamp="timestamp"
    )
    timings["load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    data, _ = preprocess(data, STEPS)
    timings["preprocess_s"] = time.perf_counter() - started
    started = time.perf_counter()
    split = per_user_split(data, test_fraction=0.2, seed=0)
    timings["split_s"] = time.perf_counter() - started
    timings |= {"events_after_filters": len(data), "users": data.n_users, "items": data.n_items}
    return split


def stage_e2e(size: str) -> dict:
    import numpy as np

    from recforge.evaluation.protocols import FullRankingEvaluator
    from recforge.models import create_model
    from recforge.models.config import TrainOptions

    total = time.perf_counter()
    timings: dict = {}
    split = _load_and_prepare(size, timings)
    started = time.perf_counter()
    model = create_model("ials", n_factors=64, n_iterations=15).fit(split.train, TrainOptions(seed=0))
    timings["fit_s"] = time.perf_counter() - started
    started = time.perf_counter()
    result = FullRankingEvaluator(split.train, split.test, ks=(10,), curve_k=10).evaluate(model)
    timings["evaluate_s"] = time.perf_counter() - started
    timings["top10_in_evaluation_s"] = result.predict_seconds
    started = time.perf_counter()
    model.recommend(np.arange(model.n_users), 10, external_ids=False)  # every user, seen items excluded
    timings["top10_all_users_s"] = time.perf_counter() - started
    timings["ndcg@10"] = float(result.summary["ndcg@10"])
    timings["recall@10"] = float(result.summary["recall@10"])
    timings["total_s"] = time.perf_counter() - total
    return timings


def stage_fit(size: str, name: str) -> dict:
    import numpy as np

    from recforge.models import create_model
    from recforge.models.config import TrainOptions

    timings: dict = {}
    split = _load_and_prepare(size, timings)
    started = time.perf_counter()
    if name == "implicit":
        import implicit
        from threadpoolctl import threadpool_limits

        matrix = split.train.to_csr("binary").astype(np.float32)
        with threadpool_limits(1, "blas"):
            model = implicit.cpu.als.AlternatingLeastSquares(
                factors=64, regularization=20.0, alpha=2.0, iterations=15, use_cg=True, random_state=0
            )
            model.fit(matrix, show_progress=False)
    elif name == "ials":
        create_model("ials", n_factors=64, n_iterations=15).fit(split.train, TrainOptions(seed=0))
    elif name == "mf":
        create_model("mf", n_factors=64, n_epochs=15).fit(split.train, TrainOptions(seed=0))
    else:
        raise SystemExit(f"unknown model {name}")
    return {"fit_s": time.perf_counter() - started, "load_s": timings["load_s"]}


RECIPE = {"steps": STEPS, "split": {"test_fraction": 0.2, "seed": 0}, "genres": {"min_frequency_quantile": 0.5}}


def stage_prepare(size: str) -> dict:
    """The preparation recipe in memory: load, steps, stratified split, genre features, taste profiles."""
    from recforge.data.interactions import Interactions
    from recforge.data.loaders import load_table
    from recforge.data.prepare import prepare, write_prepared

    started = time.perf_counter()
    folder = dataset(size)
    columns = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
    events = load_table(folder / "events.parquet", **columns)
    items = pd.read_parquet(folder / "items.parquet").set_index("item_id")
    data = Interactions.from_frame(
        events.to_frame(), rating="rating", timestamp="timestamp", rating_scale=(1, 5), item_features=items
    )
    load_s = time.perf_counter() - started
    prepared = prepare(data, RECIPE)
    write_prepared(prepared, bench_dir() / f"memory-prepared-{size}")
    return {"total_s": time.perf_counter() - started, "load_s": load_s, **prepared.counts()}


def stage_spark(size: str) -> dict:
    """The same recipe on Spark local mode (2 cores, 6 GB driver)."""
    from recforge.spark.prepare import prepare_spark, spark_session

    started = time.perf_counter()
    folder = dataset(size)
    with spark_session(local_threads=2, memory="6g") as spark:
        counts = prepare_spark(
            spark,
            folder / "events.parquet",
            bench_dir() / f"spark-prepared-{size}",
            RECIPE,
            items=folder / "items.parquet",
            rating_scale=(1, 5),
        )
    return {"total_s": time.perf_counter() - started, **counts}


def run_stage(stage: str, size: str) -> dict:
    """Run one stage in a fresh process and return its JSON result (which includes its peak RSS)."""
    command = [sys.executable, "-m", "benchmarks.large_scale", "--child", stage, "--sizes", size]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode != 0:
        return {"stage": stage, "size": size, "error": _first_error(process.stderr, process.returncode)}
    return {"stage": stage, "size": size, **json.loads(process.stdout.strip().splitlines()[-1])}


def _first_error(stderr: str, returncode: int) -> str:
    """The line that says what went wrong: a JVM stack trace ends in frames, so the last line is useless;
    the first exception or error line (Python's or Java's) names the cause."""
    if returncode < 0:  # the kernel's OOM killer sends SIGKILL and leaves no message
        return f"killed by signal {-returncode}" + (" (out of memory?)" if returncode == -9 else "")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    markers = ("OutOfMemoryError", "Exception:", "Error:", "Killed")
    causes = [line for line in lines if any(marker in line for marker in markers) and not line.startswith("at ")]
    if causes:
        return causes[0][:500]
    return f"exit code {returncode}: " + (lines[-1][:500] if lines else "no output")


def child(stage: str, size: str) -> None:
    peak = _PeakRss()
    if stage == "e2e":
        result = stage_e2e(size)
    elif stage.startswith("fit:"):
        result = stage_fit(size, stage.split(":", 1)[1])
    elif stage == "prepare":
        result = stage_prepare(size)
    elif stage == "spark":
        result = stage_spark(size)
    else:
        raise SystemExit(f"unknown stage {stage}")
    result["peak_rss_gb"] = peak.stop() / 1e9
    print(json.dumps(result))


class _PeakRss:
    """Peak resident memory of this process and all its descendants (the Spark JVM is one), sampled every
    0.1 s, and never below this process's own kernel-tracked high-water mark."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._me, self._peak, self._done = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._done.wait(0.1):
            total = 0
            for process in [self._me, *self._me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self._peak = max(self._peak, total)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self._peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1M,20M")
    parser.add_argument("--stages", default="e2e,fit:ials,fit:implicit,fit:mf,prepare,spark")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--generate-only", help="write the Parquet file of this size and stop")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sizes)
        return
    if args.generate_only:
        print(dataset(args.generate_only))
        return
    rows = _previous_rows()  # a partial run replaces only the (size, stage) rows it measured
    for size in args.sizes.split(","):
        dataset(size)
        for stage in args.stages.split(","):
            row = run_stage(stage, size)
            print(row)
            same = [i for i, r in enumerate(rows) if (r["size"], r["stage"]) == (size, stage)]
            if same:
                rows[same[0]] = row
            else:
                rows.append(row)
    columns = ["size", "stage", "total_s", "load_s", "preprocess_s", "split_s", "fit_s"]
    columns += ["evaluate_s", "top10_all_users_s"]
    columns += ["events_after_filters", "train_rows"]
    columns += ["ndcg@10", "recall@10", "peak_rss_gb", "error"]
    body = [{c: row.get(c, "") for c in columns} for row in rows]
    markdown = ["# Large synthetic data", "", __doc__.split("\n\n")[1], "", markdown_table(body, columns), ""]
    write_results("large_scale", {"rows": rows}, "\n".join(markdown))


def _previous_rows() -> list[dict]:
    path = Path(__file__).parent / "results" / "large_scale.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


if __name__ == "__main__":
    main()
