"""A split as RecBole's atomic files, so RecBole trains, validates and tests on exactly recforge's split.

RecBole (Zhao et al. 2021) reads a dataset from `<data_path>/<dataset>/<dataset>.<part>.inter` when its
config names the parts (`benchmark_filename: [train, valid, test]`), instead of splitting by itself: tab-
separated, a header of `name:type` fields (`user_id:token`, `item_id:token`, `rating:float`,
`timestamp:float`). Its models early-stop on the valid part and are tested on the test part with the
items of the earlier parts masked, which is recforge's "full ranking, training items excluded" when the
valid part is carved out of recforge's training part. RecBole cannot train without a valid part, so a
split needs one of its own or a validation carve-out (`[split.validation]`); it has no fold-in part, so
user-disjoint splits with one are refused.

Next to the files, `<dataset>.yaml` holds the RecBole settings that read them (field names, the parts, full
ranking); `recforge data split --recbole` writes both into `<split folder>/recbole/`, and RecBole's
top-k lists come back through `recforge evaluate --lists recs.csv --split <split folder>`.
Data without timestamps gets each interaction's place in its user's sequence as `timestamp`, the order
recforge's splits read as time (RecBole's sequential models order by it). An interaction without a rating
is an empty `rating` cell, which RecBole fills with the column's mean (only explicit models read it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from recforge._io import sha256_file
from recforge.data.splits import Split
from recforge.errors import ConfigError

# RecBole reads atomic files with pandas' Python engine and its default quoting: a tab or line break ends a
# field or row, a double quote starts a quoted field
_UNSAFE = re.compile(r'[\t\r\n"]')


def recbole_parts(split: Split, validation: Split | None) -> dict[str, pd.DataFrame]:
    """train, valid and test as frames of external ids (and rating, timestamp or position) for RecBole."""
    if split.fold_in_rows is not None:
        raise ConfigError(
            "RecBole has no fold-in part: a user-disjoint split with fold-in interactions cannot be written for it"
        )
    if split.valid_rows is not None:
        sources = {"train": (split, "train"), "valid": (split, "valid"), "test": (split, "test")}
    elif validation is not None:  # the carve-out of the training part: RecBole trains on its train
        sources = {"train": (validation, "train"), "valid": (validation, "test"), "test": (split, "test")}
    else:
        raise ConfigError(
            "RecBole trains with a valid part (it early-stops on it): this split has none; add a validation "
            'carve-out to the config ([split.validation], e.g. kind = "per_user", test_fraction = 0.1)'
        )
    whole: dict[int, pd.DataFrame] = {}  # one frame per data set (the carve-out's is the split's train part)
    frames = {}
    for part, (source, name) in sources.items():
        data = source.data
        if id(data) not in whole:
            whole[id(data)] = data.to_frame()
            if data.timestamp is None:
                whole[id(data)]["timestamp"] = data.positions()
        frames[part] = whole[id(data)].iloc[getattr(source, f"{name}_rows")].reset_index(drop=True)
    for part, frame in frames.items():
        for column in ("user_id", "item_id"):
            ids = frame[column]
            if not pd.api.types.is_numeric_dtype(ids):
                unsafe = ids[ids.astype(str).str.contains(_UNSAFE)]
                if len(unsafe):
                    raise ConfigError(
                        f"{column} {unsafe.iloc[0]!r} ({part} part) holds a tab, line break or double quote, which "
                        "RecBole's atomic files cannot carry"
                    )
    return frames


def dataset_name(name: str) -> str:
    """A RecBole dataset name (its folder and file stem) from a data set's name, prefixed: RecBole reads
    a dataset called "ml-100k" from its own bundled copy whatever `data_path` says."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return f"recforge-{cleaned}" if cleaned else "recforge"


def write_recbole(frames: dict[str, pd.DataFrame], data_name: str, folder: Path) -> dict[str, Any]:
    """Write `recbole_parts`' frames and the settings into `folder` (created); returns what the manifest
    records."""
    name = dataset_name(data_name)
    (folder / name).mkdir(parents=True)
    files: dict[str, Any] = {}
    for part, frame in frames.items():
        typed = {"user_id": "user_id:token", "item_id": "item_id:token"}
        if "rating" in frame.columns:
            typed["rating"] = "rating:float"
        typed["timestamp"] = "timestamp:float"
        path = folder / name / f"{name}.{part}.inter"
        frame[list(typed)].rename(columns=typed).to_csv(path, sep="\t", index=False, lineterminator="\n")
        files[part] = {"file": f"{name}/{path.name}", "rows": len(frame), "sha256": sha256_file(path)}
    columns = ["user_id", "item_id", *(["rating"] if "rating" in frames["train"].columns else []), "timestamp"]
    settings = (
        "# RecBole settings for recforge's split; run from this folder (or set data_path to its path):\n"
        f"#   from recbole.quick_start import run_recbole\n"
        f"#   run_recbole(model='BPR', dataset='{name}', config_file_list=['{name}.yaml'])\n"
        "data_path: .\n"
        f"dataset: {name}\n"
        "benchmark_filename: [train, valid, test]\n"
        "USER_ID_FIELD: user_id\nITEM_ID_FIELD: item_id\n"
        + ("RATING_FIELD: rating\n" if "rating" in columns else "")
        + "TIME_FIELD: timestamp\n"
        f"load_col:\n  inter: [{', '.join(columns)}]\n"
        "eval_args:\n  mode: full\n"
    )
    (folder / f"{name}.yaml").write_text(settings)
    return {"dataset": name, "settings": f"{name}.yaml", "parts": files}
