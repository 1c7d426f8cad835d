"""Amazon product data: the sequential benchmark text layout and the raw review JSON-lines.

Sequential layout (S3-Rec / ICLRec `Beauty.txt`): one line per user, `user item item ...`, items in time
order, no ratings or timestamps; the order of each line is the time order. A folder may also hold
`item_asin.tsv` (item id -> ASIN) and `<Name>_item2attributes.json` (item id -> attribute ids), which
become item features, and titles can be joined from a metadata file keyed by ASIN.

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
from recforge.data.loaders._download import RemoteSource, resolve_dataset_dir
from recforge.data.loaders._source import check_scale, decode_file, source_info
from recforge.data.vocabulary import Vocabulary
from recforge.errors import DataFormatError

BEAUTY_REMOTE = RemoteSource(
    url="https://github.com/salesforce/ICLRec/archive/2890e6c3ff6a22c6699fc19cb863b66786c1cde4.zip",
    archive_checksum=None,
    inner_folder="ICLRec-2890e6c3ff6a22c6699fc19cb863b66786c1cde4/data",
    key_file="Beauty.txt",
    key_sha256="226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
)


def read_sequence_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse `user item item ...` lines into (user_ids, item_ids) arrays in file order, vectorised."""
    text = decode_file(path, "utf-8")
    lines = text.splitlines()
    tokens_per_line = np.array([len(line.split()) for line in lines], dtype=np.int64)
    try:
        tokens = np.array(text.split(), dtype=np.int64)
    except ValueError as exc:
        for number, line in enumerate(lines, start=1):
            for token in line.split():
                if not token.lstrip("-").isdigit():
                    raise DataFormatError(f"not an integer id: {token!r}", path=path, line=number) from exc
        raise DataFormatError(str(exc), path=path) from exc
    nonempty = tokens_per_line > 0
    starts = np.r_[0, np.cumsum(tokens_per_line)[:-1]][nonempty]
    lengths = tokens_per_line[nonempty] - 1
    users = np.repeat(tokens[starts], lengths)
    is_user = np.zeros(len(tokens), dtype=bool)
    is_user[starts] = True
    items = tokens[~is_user]
    duplicated_users = pd.Index(tokens[starts]).duplicated()
    if duplicated_users.any():
        line = int(np.flatnonzero(nonempty)[np.flatnonzero(duplicated_users)[0]]) + 1
        raise DataFormatError(f"user {tokens[starts][duplicated_users][0]} has a second line", path=path, line=line)
    return users, items


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
    file: str = "Beauty.txt",
    metadata: str | Path | None = None,
    name: str = "amazon-beauty",
) -> Interactions:
    """Sequential benchmark layout (default: Amazon Beauty, 22363 users, 12101 items, 198502 interactions).

    Item features, when the side files exist: asin, attributes (list of attribute ids), and title /
    categories from `metadata` (joined by ASIN).
    """
    folder = resolve_dataset_dir(name, path, (file,), BEAUTY_REMOTE if file == "Beauty.txt" else None)
    users, items = read_sequence_file(folder / file)
    vocab_users, user_codes = Vocabulary.encode(users, name="user")
    vocab_items, item_codes = Vocabulary.encode(items, name="item")
    features = pd.DataFrame(index=pd.Index(vocab_items.ids, name="item_id"))
    asin_path = folder / "item_asin.tsv"
    if asin_path.exists():
        asin = pd.read_csv(asin_path, sep="\t", dtype={"item_id": np.int64, "asin": str}).set_index("item_id")["asin"]
        features["asin"] = asin.reindex(features.index).to_numpy()
    attribute_files = sorted(folder.glob(f"{Path(file).stem}_item2attributes.json"))
    if attribute_files:
        attributes = json.loads(attribute_files[0].read_text())
        features["attributes"] = [attributes.get(str(i), []) for i in features.index]
    if metadata is not None:
        if "asin" not in features.columns:
            raise DataFormatError("metadata is joined by ASIN, but item_asin.tsv is missing", path=folder)
        meta = read_amazon_metadata(metadata)
        features = features.join(meta, on="asin")
    return Interactions(
        users=vocab_users,
        items=vocab_items,
        user_index=user_codes,
        item_index=item_codes,
        item_features=features.reset_index(drop=True) if features.shape[1] else None,
        name=name,
        source=source_info(folder, [file, "item_asin.tsv", *[p.name for p in attribute_files]]),
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
    overall = pd.to_numeric(frame["overall"], errors="coerce").to_numpy(dtype=np.float64)
    check_scale(overall, frame.assign(_line=np.arange(1, len(frame) + 1)), "overall", reviews, (1, 5))
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
