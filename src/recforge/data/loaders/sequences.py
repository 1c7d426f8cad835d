"""Sequence files: one line per user, `user item item ...`, items in time order (the layout of the
S3-Rec / ICLRec benchmark files: Amazon Beauty, Sports, Toys, Yelp, LastFM, ...).

There are no ratings or timestamps: the order within a line is the time order. Side files beside the
sequence file become item features when present: `<stem>_item2attributes.json` (item id -> attribute
ids) and `<stem>_item_asin.tsv` (item id -> Amazon ASIN, `item_id<TAB>asin`), or any ASIN map named by
`asin_file`; titles and categories join from a metadata file keyed by ASIN.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.data.interactions import Interactions
from recforge.data.loaders._download import resolve_dataset_dir, split_file_path
from recforge.data.loaders._source import decode_file, parse_int, read_delimited, source_info
from recforge.data.vocabulary import Vocabulary
from recforge.errors import DataFormatError, DatasetNotFoundError

FILE_HINT = "pass file=<name> (or the sequence file's own path) to read another file"


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


def read_asin_map(path: Path) -> pd.Series:
    """`item_id<TAB>asin` lines with a header -> ASIN by integer item id; a bad id or an id given twice is
    named with its line."""
    frame = read_delimited(path, sep="\t", columns=("item_id", "asin"), header=True)
    ids = parse_int(frame, "item_id", path)
    repeated = pd.Series(ids).duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataFormatError(
            f"item {ids[row]} has a second ASIN", path=path, line=int(frame["_line"].iloc[row]), column="item_id"
        )
    return pd.Series(frame["asin"].str.strip().to_numpy(), index=pd.Index(ids, name="item_id"), name="asin")


def read_item_attributes(path: Path) -> dict[str, list[int]]:
    """`<stem>_item2attributes.json` (S3-Rec/ICLRec): an object mapping each item id to a list of integer
    attribute ids. Malformed JSON is named with its line; a value that is not such a list names its item
    (a string would otherwise be read as a sequence of characters)."""
    try:
        attributes = json.loads(decode_file(path, "utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    if not isinstance(attributes, dict):
        kind = type(attributes).__name__
        raise DataFormatError(f"expected an object of item id -> attribute ids, got {kind}", path=path)
    for item, values in attributes.items():
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DataFormatError(
                f"item {item}: attributes must be a list of integer ids, got {json.dumps(values)[:60]}", path=path
            )
    return attributes


def load_sequence_file(
    path: str | Path | None = None,
    *,
    file: str | None = None,
    name: str | None = None,
    metadata: str | Path | None = None,
    asin_file: str | None = None,
) -> Interactions:
    """Any `user item item ...` sequence file (one line per user, time order), labelled by its stem.

    `path` is the file, or its folder with `file=`. `name` labels the data in reports (default: the
    file's stem); `metadata` (Amazon metadata lines) adds title and categories joined by ASIN. A named
    preset with its own download (amazon-beauty) finds its folder first and passes it here.
    """
    folder, file = split_file_path(path, file, "")
    if not file:
        raise DatasetNotFoundError(
            "dataset 'sequence-file' needs the sequence file: pass its path, or a folder and file="
        )
    folder = resolve_dataset_dir("sequence-file", folder, (file,), None, {file: FILE_HINT})
    stem = Path(file).stem
    users, items = read_sequence_file(folder / file)
    vocab_users, user_codes = Vocabulary.encode(users, name="user")
    vocab_items, item_codes = Vocabulary.encode(items, name="item")
    features = pd.DataFrame(index=pd.Index(vocab_items.ids, name="item_id"))
    asin_name = asin_file or f"{stem}_item_asin.tsv"
    asin_path = folder / asin_name
    if asin_file is not None and not asin_path.exists():
        raise DatasetNotFoundError(f"{folder} lacks the ASIN map {asin_file!r} named by asin_file=")
    if asin_path.exists():
        features["asin"] = read_asin_map(asin_path).reindex(features.index).to_numpy()
    attribute_path = folder / f"{stem}_item2attributes.json"
    if attribute_path.exists():
        attributes = read_item_attributes(attribute_path)
        features["attributes"] = [attributes.get(str(i), []) for i in features.index]
    if metadata is not None:
        if "asin" not in features.columns:
            raise DataFormatError(
                f"metadata is joined by ASIN, but there is no ASIN map ({asin_name}); name one with asin_file=",
                path=folder,
            )
        from recforge.data.loaders.amazon import read_amazon_metadata

        features = features.join(read_amazon_metadata(metadata), on="asin")
    side = [p.name for p in (asin_path, attribute_path) if p.exists()]
    return Interactions(
        users=vocab_users,
        items=vocab_items,
        user_index=user_codes,
        item_index=item_codes,
        item_features=features.reset_index(drop=True) if features.shape[1] else None,
        name=name or stem,
        source=source_info(folder, [file, *side]),
    )
