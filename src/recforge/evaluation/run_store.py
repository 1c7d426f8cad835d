"""Finished runs of an experiment on disk, so an interrupted `recforge compare` keeps what it finished
and `--resume` continues where it stopped.

`<report>/runs/` holds `experiment.json` (a fingerprint of the config and the data) and, per finished
(seed, fold, model), `seed<s>-fold<f>-<nnn>.json` (labels, parameters, timings, training log, summaries, curves,
notes) beside Parquet/safetensors files for the per-user tables, top-k lists and predictions. Nothing is
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
from safetensors.numpy import load_file, save_file

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

    def _stem(self, seed: int, fold: int, index: int, part: int = 0) -> str:
        return f"seed{seed}-fold{fold}-{index:03d}-{part}"

    def save_group(self, runs: list[ModelRun], index: int) -> None:
        """The runs one configured model produced (itself, and e.g. its clustered variants), then a marker
        naming how many: a group without its marker (a kill half-way) counts as not finished."""
        for part, run in enumerate(runs):
            self.save(run, index, part)
        first = runs[0]
        marker = self.folder / f"{self._stem(first.seed, first.fold, index)}.group.json"
        write_json_atomic(marker, {"parts": len(runs), "label": first.label})

    def load_group(self, seed: int, fold: int, index: int, label: str, items: Vocabulary) -> list[ModelRun] | None:
        marker = self.folder / f"{self._stem(seed, fold, index)}.group.json"
        if not marker.is_file():
            return None
        stored = json.loads(marker.read_text())
        if stored.get("label") != label:
            return None
        runs = [self.load(seed, fold, index, None, items, part) for part in range(int(stored["parts"]))]
        return None if any(run is None for run in runs) else runs  # type: ignore[return-value]

    def save(self, run: ModelRun, index: int, part: int = 0) -> None:
        stem = self._stem(run.seed, run.fold, index, part)
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
                    "users": np.ascontiguousarray(top.users, dtype=np.int64),
                    "item_index": np.ascontiguousarray(top.item_index, dtype=np.int64),
                    "scores": np.ascontiguousarray(top.scores, dtype=np.float32),
                }
                extra = {
                    "curves": result.curves,
                    "topk_accuracy": result.topk_accuracy,
                    "served_by": [str(path) for path in top.served_by],
                }
            else:
                kind, extra = "rating", {}
                arrays = {"predictions": np.ascontiguousarray(result.predictions)}
            with atomic_path(base.with_suffix(".safetensors")) as tmp:
                save_file(arrays, str(tmp))
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
                    "elbow": run.elbow,
                    "fit_seconds": run.fit_seconds,
                    "training_log": run.training_log,
                    "search": run.search,
                    "skipped": run.skipped,
                    "results": results,
                }
            ),
        )

    def load(
        self, seed: int, fold: int, index: int, label: str | None, items: Vocabulary, part: int = 0
    ) -> ModelRun | None:
        """The finished run of model number `index` (named `label`, unless None) for `seed` and `fold`."""
        stem = self._stem(seed, fold, index, part)
        path = self.folder / f"{stem}.json"
        if not path.is_file():
            return None
        payload = json.loads(path.read_text())
        if label is not None and payload["label"] != label:
            return None
        results: dict[str, RankingResult | RatingResult] = {}
        for protocol, stored in payload["results"].items():
            base = self.folder / f"{stem}.{protocol}"
            per_user = pd.read_parquet(base.with_suffix(".per_user.parquet"))
            arrays = load_file(str(base.with_suffix(".safetensors")))
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
                        served_by=np.asarray(stored["served_by"], dtype=object),
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
            elbow=payload.get("elbow", {}),
        )
