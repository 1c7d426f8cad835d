"""The `make demo` / `recforge demo` job: MovieLens 100K from raw files to a comparison report.

Kept as an ordinary experiment config so that what the demo shows is exactly what `recforge compare`
would do with the same TOML (`demo_config` below is that config as a dict; docs/quickstart/ has a
quickstart per study).
"""

from __future__ import annotations

from pathlib import Path

from recforge.experiment import ExperimentConfig


def demo_config(path: Path | str | None = None) -> ExperimentConfig:
    """Per-user 80/20 split (seed 42), full-ranking and rating protocols, the strongest models recforge has."""
    return ExperimentConfig.model_validate(
        {
            "name": "demo-ml-100k",
            "seed": 42,
            "dataset": {"name": "ml-100k", "path": None if path is None else str(path)},
            "split": {"kind": "per_user", "test_fraction": 0.2},
            "evaluation": {"protocols": ["ranking", "rating"], "ks": [5, 10, 20], "diversity_features": "genres"},
            "models": [
                {"model": "blend", "protocols": ["ranking"]},
                {"model": "ease", "protocols": ["ranking"]},
                {"model": "ials", "protocols": ["ranking"]},
                {"model": "bayesian_mf", "protocols": ["rating"]},
                {"model": "mf", "protocols": ["rating"]},
                {"model": "item_knn", "protocols": ["rating"]},
                {"model": "weighted_popularity"},
            ],
        }
    )
