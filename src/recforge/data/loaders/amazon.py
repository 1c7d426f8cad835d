"""Amazon product data: the sequential benchmark text layout and the raw review JSON-lines.

Sequential layout (S3-Rec / ICLRec `Beauty.txt`, `Sports_and_Outdoors.txt`, ...): read by the generic
sequence-file reader (`recforge.data.loaders.sequences`); `load_amazon_sequences` adds Beauty's
download, the `amazon-<stem>` label and the shared Beauty folder's `item_asin.tsv`.

Raw layout (McAuley et al. 2014/2018): reviews as JSON lines with reviewerID, asin, overall,
unixReviewTime; optional metadata lines with asin, title, categories (the 2014 files use Python dict
literals, which are read with `ast.literal_eval`, never `eval`).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.data.interactions import Interactions
from recforge.data.loaders._download import RemoteSource, resolve_dataset_dir, split_file_path
from recforge.data.loaders._source import decode_file, parse_ratings, source_info
from recforge.data.loaders.sequences import FILE_HINT as SEQUENCE_FILE_HINT
from recforge.data.loaders.sequences import load_sequence_file
from recforge.errors import DataFormatError

BEAUTY_FILE = "Beauty.txt"
BEAUTY_REMOTE = RemoteSource(
    url="https://github.com/salesforce/ICLRec/archive/2890e6c3ff6a22c6699fc19cb863b66786c1cde4.zip",
    archive_checksum=None,
    inner_folder="ICLRec-2890e6c3ff6a22c6699fc19cb863b66786c1cde4/data",
    key_file="Beauty.txt",
    key_sha256="226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
)


def _read_json_lines(path: Path) -> pd.DataFrame:
    """JSON lines (or Python dict literals, as in the 2014 metadata) -> frame; bad lines are named."""
    text = decode_file(path, "utf-8")
    try:
        return pd.read_json(path, lines=True, dtype=False)
    except ValueError:
        pass  # not strict JSON lines: parse line by line to accept literals and name a bad line
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError) as exc:
                raise DataFormatError("neither JSON nor a Python literal", path=path, line=number) from exc
        if not isinstance(record, dict):
            raise DataFormatError("each line must be an object", path=path, line=number)
        records.append(record)
    return pd.DataFrame.from_records(records)


def read_amazon_metadata(path: str | Path) -> pd.DataFrame:
    """Metadata lines -> frame indexed by ASIN with title and categories (flattened, de-duplicated)."""
    path = Path(path)
    meta = _read_json_lines(path)
    if "asin" not in meta.columns:
        raise DataFormatError("metadata lines need an 'asin' field", path=path, column="asin")
    frame = pd.DataFrame(index=pd.Index(meta["asin"].astype(str), name="asin"))
    frame["title"] = meta["title"].to_numpy() if "title" in meta.columns else None
    if "categories" in meta.columns:

        def flatten(value: Any) -> list[str]:
            if not isinstance(value, list):
                return []
            parts = [c for group in value for c in (group if isinstance(group, list) else [group])]
            return list(dict.fromkeys(str(c) for c in parts))

        frame["categories"] = meta["categories"].map(flatten).to_numpy()
    return frame[~frame.index.duplicated(keep="first")]


def load_amazon_sequences(
    path: str | Path | None = None,
    *,
    file: str | None = None,
    metadata: str | Path | None = None,
    name: str | None = None,
    asin_file: str | None = None,
) -> Interactions:
    """Amazon sequential benchmark files (S3-Rec layout); default Beauty.txt, downloaded when missing.

    Beauty: 22363 users, 12101 items, 198502 interactions. `path` is the folder or the file itself; `file`
    names another file in the same layout (Sports_and_Outdoors.txt, Toys_and_Games.txt, ...), labelled
    `amazon-<stem>` unless `name` is given.

    Item features, when the side files exist: asin (from `<stem>_item_asin.tsv`; for Beauty.txt also
    the shipped `item_asin.tsv`), attributes (list of attribute ids), and title / categories from
    `metadata` (joined by ASIN).
    """
    folder, file = split_file_path(path, file, BEAUTY_FILE)
    # where the file is (RECFORGE_DATA_DIR, the cache, a download) decides which side files are there
    remote = BEAUTY_REMOTE if file == BEAUTY_FILE else None
    folder = resolve_dataset_dir("amazon-beauty", folder, (file,), remote, {file: SEQUENCE_FILE_HINT})
    if asin_file is None and file == BEAUTY_FILE and (folder / "item_asin.tsv").exists():
        asin_file = "item_asin.tsv"  # the shared Beauty folder's map, written for Beauty.txt only
    return load_sequence_file(
        folder,
        file=file,
        name=name or ("amazon-beauty" if file == BEAUTY_FILE else f"amazon-{Path(file).stem.lower()}"),
        metadata=metadata,
        asin_file=asin_file,
    )


def load_amazon_reviews(
    reviews: str | Path, metadata: str | Path | None = None, *, name: str = "amazon-reviews"
) -> Interactions:
    """Raw review JSON lines (reviewerID, asin, overall 1-5, unixReviewTime), titles from `metadata`."""
    reviews = Path(reviews)
    frame = _read_json_lines(reviews)
    missing = [c for c in ("reviewerID", "asin", "overall", "unixReviewTime") if c not in frame.columns]
    if missing:
        raise DataFormatError(f"review lines lack field(s) {missing}", path=reviews, column=missing[0])
    for column in ("reviewerID", "asin", "overall", "unixReviewTime"):
        if frame[column].isna().any():
            line = int(np.flatnonzero(frame[column].isna().to_numpy())[0]) + 1
            raise DataFormatError("missing value", path=reviews, line=line, column=column)
    overall = parse_ratings(frame.assign(_line=np.arange(1, len(frame) + 1)), "overall", reviews, (1, 5))
    table = pd.DataFrame(
        {
            "user_id": frame["reviewerID"].astype(str),
            "item_id": frame["asin"].astype(str),
            "rating": overall,
            "timestamp": pd.to_numeric(frame["unixReviewTime"], errors="raise").astype(np.int64),
        }
    )
    item_features = read_amazon_metadata(metadata) if metadata is not None else None
    return Interactions.from_frame(
        table,
        rating="rating",
        timestamp="timestamp",
        rating_scale=(1.0, 5.0),
        item_features=item_features,
        name=name,
        source=source_info(reviews.parent, [reviews.name] + ([Path(metadata)] if metadata else [])),
    )
