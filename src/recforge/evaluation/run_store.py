"""Finished runs of an experiment on disk, so an interrupted `recforge compare` keeps what it finished
and `--resume` continues where it stopped.

`<report>/runs/` holds `experiment.json` (a fingerprint of the config and the data) and, per finished
(seed, fold, model), `seed<s>-fold<f>-<nnn>.json` (labels, parameters, timings, training log, summaries, curves,
notes) beside Parquet/npz files for the per-user tables, top-k lists and predictions. Nothing is
pickled; every file is written atomically, the JSON last, so a run is either complete or absent.
A resumed run is read back exactly (floats round-trip through JSON), so the report of a resumed
experiment equals the report of an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge._io import atomic_path, write_json_atomic, write_text_atomic
from recforge.data.vocabulary import Vocabulary
from recforge.errors import ConfigError
from recforge.evaluation.protocols import RankingResult, RatingResult
from recforge.evaluation.results import ModelRun
from recforge.models.base import Recommendations

RUNS = "runs"
MANIFEST = "experiment.json"


class RunStore:
    """The finished runs of one experiment (config + data), under `folder`."""

    def __init__(self, folder: str | Path, fingerprint: str, *, resume: bool) -> None:
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if resume and manifest.is_file():
            stored = json.loads(manifest.read_text())
            if stored.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{self.folder}: the finished runs there belong to another config or dataset; "
                    "run without --resume to start over, or choose another --output"
                )
        elif self.folder.exists():
            shutil.rmtree(self.folder)  # a fresh run never mixes with an older one
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, {"fingerprint": fingerprint})

    def _stem(self, seed: int, fold: int, index: int) -> str:
        return f"seed{seed}-fold{fold}-{index:03d}"

    def save(self, run: ModelRun, index: int) -> None:
        stem = self._stem(run.seed, run.fold, index)
        results = {}
        for protocol, result in run.results.items():
            base = self.folder / f"{stem}.{protocol}"
            with atomic_path(base.with_suffix(".per_user.parquet")) as tmp:
                result.per_user.to_parquet(tmp)
            arrays: dict[str, np.ndarray]
            if isinstance(result, RankingResult):
                kind = "ranking"
                top = result.recommended
                arrays = {
                    "users": top.users,
                    "item_index": top.item_index,
                    "scores": top.scores,
                    "served_by": np.asarray(top.served_by, dtype=str),
                }
                extra = {"curves": result.curves, "topk_accuracy": result.topk_accuracy}
            else:
                kind, arrays, extra = "rating", {"predictions": result.predictions}, {}
            with atomic_path(base.with_suffix(".npz")) as tmp, tmp.open("wb") as handle:
                np.savez(handle, **arrays)
            results[protocol] = {
                "kind": kind,
                "protocol": result.protocol,
                "summary": result.summary,
                "notes": result.notes,
                "predict_seconds": result.predict_seconds,
                **extra,
            }
        write_text_atomic(  # key order kept (not sorted): summaries list metrics in the evaluator's order
            self.folder / f"{stem}.json",
            json.dumps(
                {
                    "label": run.label,
                    "model": run.model,
                    "params": run.params,
                    "is_baseline": run.is_baseline,
                    "seed": run.seed,
                    "fold": run.fold,
                    "fit_seconds": run.fit_seconds,
                    "training_log": run.training_log,
                    "search": run.search,
                    "skipped": run.skipped,
                    "results": results,
                }
            ),
        )

    def load(self, seed: int, fold: int, index: int, label: str, items: Vocabulary) -> ModelRun | None:
        """The finished run of model number `index` (named `label`) for `seed` and `fold`, or None."""
        stem = self._stem(seed, fold, index)
        path = self.folder / f"{stem}.json"
        if not path.is_file():
            return None
        payload = json.loads(path.read_text())
        if payload["label"] != label:
            return None
        results: dict[str, RankingResult | RatingResult] = {}
        for protocol, stored in payload["results"].items():
            base = self.folder / f"{stem}.{protocol}"
            per_user = pd.read_parquet(base.with_suffix(".per_user.parquet"))
            with np.load(base.with_suffix(".npz"), allow_pickle=False) as arrays:
                arrays = {name: arrays[name] for name in arrays.files}
            common: dict[str, Any] = {
                "protocol": stored["protocol"],
                "per_user": per_user,
                "summary": stored["summary"],
                "notes": stored["notes"],
                "predict_seconds": stored["predict_seconds"],
            }
            if stored["kind"] == "ranking":
                index_ = arrays["item_index"]
                results[protocol] = RankingResult(
                    curves=stored["curves"],
                    topk_accuracy=stored["topk_accuracy"],
                    recommended=Recommendations(
                        users=arrays["users"],
                        item_index=index_,
                        items=np.where(index_ >= 0, items.lookup(np.maximum(index_, 0)), None)
                        if index_.size
                        else np.zeros(index_.shape, object),
                        scores=arrays["scores"],
                        served_by=arrays["served_by"].astype(object),
                    ),
                    **common,
                )
            else:
                results[protocol] = RatingResult(predictions=arrays["predictions"], **common)
        return ModelRun(
            label=payload["label"],
            model=payload["model"],
            params=payload["params"],
            is_baseline=payload["is_baseline"],
            seed=payload["seed"],
            fit_seconds=payload["fit_seconds"],
            results=results,
            training_log=payload["training_log"],
            search=payload["search"],
            skipped=payload["skipped"],
            fold=payload["fold"],
        )
