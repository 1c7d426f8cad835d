"""Helpers shared by benchmark scripts: timing, peer shims, and writing results (JSON + Markdown)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recforge import __version__
from recforge._io import write_json_atomic, write_text_atomic
from recforge.coldstart import KNOWN_USERS, RATINGS
from recforge.models.base import Recommender

RESULTS = Path(__file__).parent / "results"


def data_dir() -> Path:
    path = Path(os.environ.get("RECFORGE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not path.is_dir():
        sys.exit(f"datasets not found at {path}; set RECFORGE_DATA_DIR")
    os.environ["RECFORGE_DATA_DIR"] = str(path)
    return path


def timed(function: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """(last result, median wall seconds over `repeats` runs)."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


class PeerScores(Recommender):
    """Wraps a peer library's fitted model so recforge's evaluators score it exactly like our models.

    `score_fn(users) -> (n, n_items)` scores known users; `predict_fn(users, items) -> (n,)` predicts ratings.
    """

    name = "peer"

    def __init__(self, label: str, score_fn: Callable | None = None, predict_fn: Callable | None = None) -> None:
        super().__init__()
        self.label = label
        self.score_fn, self.predict_fn = score_fn, predict_fn
        self.capabilities = frozenset({KNOWN_USERS} | ({RATINGS} if predict_fn else set()))

    def _fit(self, train, options):
        pass

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        if self.score_fn is None:
            raise NotImplementedError
        return self.score_fn(users)

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.predict_fn(users, items)


def machine() -> dict[str, Any]:
    return {
        "recforge": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"), **payload}
    write_json_atomic(RESULTS / f"{name}.json", json.loads(json.dumps(payload, default=float)))
    write_text_atomic(RESULTS / f"{name}.md", markdown)
    print(f"\nwrote {RESULTS / name}.json and .md")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value: Any, column: str) -> str:
        if isinstance(value, float) and column.startswith("p (") and value < 1e-3:
            return f"{value:.1e}"  # a p value: its order of magnitude, not 0.0000
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, ""), c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
