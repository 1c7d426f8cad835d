"""A saved model against files of users, pairs or interactions: what `recforge evaluate`, `recforge
predict` and batch `recforge recommend` run.

Files are CSV/TSV (any separator pandas can sniff, or `sep`) or Parquet, with a header row naming the
columns, or text files without one whose fields `names` lists (MovieLens' u1.test: user, item, rating,
timestamp separated by tabs). Ids are read in the model's own id type (integer vocabularies read integer ids, string
vocabularies strings), so "50" in a file matches item 50 of a MovieLens model. A row whose user or item
the model does not know is an error naming the file, row and id; with `unknown="drop"` such rows are
left out and counted in the result, never silently; `evaluate_saved(unknown="miss")` keeps a known user's
unknown items as misses instead (the honest count: those items were relevant, and the model could not
offer them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from recforge._io import atomic_path, check_output
from recforge.coldstart import RATINGS
from recforge.data.columns import rating_values
from recforge.data.interactions import Interactions
from recforge.data.loaders._source import read_delimited, stripped_text
from recforge.data.vocabulary import Vocabulary
from recforge.errors import CapabilityError, DataFormatError
from recforge.evaluation.protocols import FullRankingEvaluator, RankingResult, RatingEvaluator, RatingResult
from recforge.models.base import Recommender
from recforge.models.explain import explain_history
from recforge.retrieval.topk import batched

Unknown = Literal["raise", "drop"]
# evaluate only: "miss" leaves unknown users' rows out but keeps unknown items as relevant items the model
# could not recommend (as `recforge compare` counts items only the test part has); "drop" would leave them
# out of each user's relevant set and so raise recall and NDCG above what the same split gives in compare
EvaluateUnknown = Literal["raise", "drop", "miss"]


def read_table(
    path: str | Path, columns: list[str], sep: str | None = None, names: list[str] | None = None
) -> pd.DataFrame:
    """The named columns of a CSV/TSV/Parquet file with a header row, of a text file without one whose
    fields `names` lists in order (as strings for text files: ids are converted to the model's id type
    later, so leading zeros and long ids survive), or of a folder of Parquet part files (Spark's output).
    Text is read by the loaders' strict reader (separator sniffed unless given, UTF-16 marks, blank lines
    skipped, bad lines named); the frame's index is each row's 1-based line (header included; Parquet: the
    row number), for errors found later."""
    path = Path(path)
    spark_folder = path.is_dir() and any(path.glob("*.parquet"))  # `recforge spark score` writes part files
    if not path.is_file() and not spark_folder:
        raise DataFormatError(
            "no such file" + (" (a folder without Parquet part files)" if path.is_dir() else ""), path=path
        )
    if not spark_folder and path.suffix.lower() not in (".parquet", ".pq"):
        header = names is None
        frame = read_delimited(path, sep=sep, columns=columns if header else names, header=header)  # type: ignore[arg-type]
        return frame.set_index("_line")[columns]
    try:
        frame = pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise DataFormatError(f"cannot read the file: {exc}", path=path) from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataFormatError(f"lacks column(s) {missing}; it has {list(frame.columns)}", path=path)
    frame.index = np.arange(1, len(frame) + 1)
    return frame[columns]


def vocabulary_indices(values: pd.Series, vocabulary: Vocabulary, path: Path, column: str) -> np.ndarray:
    """Positions of file ids in a vocabulary (a model's or a split's; -1 when unknown), converting ids to its type."""
    ids = vocabulary.ids
    if ids.dtype.kind in "iu":
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() | (numbers != np.floor(numbers))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataFormatError(
                f"column {column!r}: {values.iloc[row]!r} is not an integer id (these ids are integers)",
                path=path,
                line=int(values.index[row]),  # read_table's index: the row's line
            )
        values = numbers.astype(np.int64)
    else:
        values = values.astype(str)
    return vocabulary.index(values.to_numpy(), missing="ignore")


def _known_rows(
    frame: pd.DataFrame,
    model: Recommender,
    path: Path,
    user: str,
    item: str | None,
    unknown: Unknown,
    hint: str = "pass --unknown drop to leave them out",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """User and item indices of the rows, and the rows kept (all, or the known ones with drop)."""
    users = vocabulary_indices(frame[user], model.users_, path, user)
    items = vocabulary_indices(frame[item], model.items_, path, item) if item is not None else None
    known = (users >= 0) & (items >= 0 if items is not None else True)
    if unknown == "raise" and not known.all():
        row = int(np.flatnonzero(~known)[0])
        which = user if users[row] < 0 else item
        raise DataFormatError(
            f"{which} {frame[which].iloc[row]!r} is unknown to the model ({int((~known).sum())} such row(s)); {hint}",
            path=path,
            line=int(frame.index[row]),
        )
    keep = np.flatnonzero(known)
    return users[keep], (items[keep] if items is not None else None), keep


@dataclass
class SavedEvaluation:
    ranking: RankingResult
    rating: RatingResult | None
    rows: int  # rows in the file
    dropped_unknown: int  # rows left out because their user or item is unknown to the model
    missed_unknown: int = 0  # rows kept as relevant items the model does not know (unknown="miss")


def evaluate_saved(
    model: Recommender,
    path: str | Path,
    *,
    user: str = "user_id",
    item: str = "item_id",
    rating: str | None = None,
    ks: tuple[int, ...] = (5, 10, 20),
    sep: str | None = None,
    unknown: EvaluateUnknown = "raise",
    names: list[str] | None = None,
) -> SavedEvaluation:
    """Full-ranking metrics of `model` on the interactions in `path` (the items each user had in training
    excluded, as in `recforge compare`), and rating metrics when the file has `rating` and the model
    predicts ratings. `unknown`: "raise", "drop" (rows with an unknown user or item left out) or "miss"
    (rows of unknown users left out; unknown items stay relevant, out of the model's reach, and only the
    rating metrics leave them out)."""
    path = Path(path)
    frame = read_table(path, [c for c in (user, item, rating) if c is not None], sep, names)
    if unknown == "miss":
        users, _, keep = _known_rows(frame, model, path, user, None, "drop")
        items = vocabulary_indices(frame[item].iloc[keep], model.items_, path, item)
    else:
        hint = "pass --unknown miss to count unknown items as relevant items the model missed, or drop to leave out"
        users, items, keep = _known_rows(frame, model, path, user, item, unknown, hint)  # type: ignore[arg-type]
    assert items is not None
    ratings = None
    if rating is not None:
        ratings = _ratings(frame[rating].iloc[keep], path, rating)
    seen = model.seen_.tocoo()
    train = Interactions(users=model.users_, items=model.items_, user_index=seen.row, item_index=seen.col)
    missed = items < 0
    catalogue, relevant = model.items_, items
    if missed.any():  # unknown items as extra columns past the model's catalogue: relevant, never ranked
        raw = frame[item].iloc[keep[missed]]
        raw = pd.to_numeric(raw).astype(np.int64) if model.items_.ids.dtype.kind in "iu" else raw.astype(str)
        extra, codes = np.unique(raw.to_numpy(), return_inverse=True)
        catalogue = Vocabulary(np.concatenate([model.items_.ids, extra]), model.items_.name)
        relevant = items.copy()
        relevant[missed] = model.n_items + codes
    test = Interactions(
        users=model.users_,
        items=catalogue,
        user_index=users,
        item_index=relevant,
        rating=ratings,
        rating_scale=model.rating_scale_,
        name=path.name,
    )
    ranking = FullRankingEvaluator(train, test, ks=ks, check_fit=False).evaluate(model)
    rated = None
    if ratings is not None and RATINGS in model.capabilities:
        if missed.any():  # a rating of an item the model does not know cannot be predicted
            test = Interactions(
                users=model.users_,
                items=model.items_,
                user_index=users[~missed],
                item_index=items[~missed],
                rating=ratings[~missed],
                rating_scale=model.rating_scale_,
                name=path.name,
            )
        rated = RatingEvaluator(train, test, check_fit=False).evaluate(model)
    return SavedEvaluation(ranking, rated, len(frame), len(frame) - len(keep), int(missed.sum()))


def _ratings(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """A held-out file's ratings, read by the loaders' rule (`data.columns.rating_values`: numbers, finite;
    "inf" was read as a rating and made RMSE infinite), and present on every row: an evaluation file's
    rating column rates each of its rows."""
    values = stripped_text(values)  # text read from a file; Parquet columns may be numbers already
    values = values.where(values != "", None)
    ratings = rating_values(values, column=column, locate=lambda p: {"path": path, "line": int(values.index[p])})
    missing = np.isnan(ratings)
    if missing.any():
        raise DataFormatError(
            f"rating is missing ({int(missing.sum())} row(s)); every row of a file evaluated with --rating needs one",
            path=path,
            line=int(values.index[int(np.flatnonzero(missing)[0])]),
            column=column,
        )
    return ratings


def predict_file(
    model: Recommender,
    path: str | Path,
    *,
    user: str = "user_id",
    item: str = "item_id",
    sep: str | None = None,
    unknown: Literal["raise", "drop", "prior"] = "raise",
    names: list[str] | None = None,
) -> pd.DataFrame:
    """The file's (user, item) pairs with the model's predicted rating (`prediction`); a model that does not
    predict ratings is refused before the file is read. `unknown="prior"` predicts pairs with a user or item
    the model does not know from what it does know (`prior_ratings`), in the file's order, and marks them in
    a `prior` column."""
    if RATINGS not in model.capabilities:
        raise CapabilityError(f"{model.name} does not predict ratings (it ranks items: use recommend)")
    path = Path(path)
    frame = read_table(path, [user, item], sep, names)
    if unknown == "prior":
        users = vocabulary_indices(frame[user], model.users_, path, user)
        items = vocabulary_indices(frame[item], model.items_, path, item)
        return pd.DataFrame(
            {
                user: _typed(frame[user], model.users_),
                item: _typed(frame[item], model.items_),
                "prediction": prior_ratings(model, users, items),
                "prior": (users < 0) | (items < 0),
            }
        )
    hint = "pass --unknown prior to predict them from what the model knows, or drop to leave them out"
    users, items, _ = _known_rows(frame, model, path, user, item, unknown, hint)  # type: ignore[arg-type]
    assert items is not None
    return pd.DataFrame(
        {
            user: model.users_.lookup(users),
            item: model.items_.lookup(items),
            "prediction": model.predict(users, items),
        }
    )


def prior_ratings(model: Recommender, users: np.ndarray, items: np.ndarray, top: int = 1000) -> np.ndarray:
    """Predicted ratings where the user or the item may be unknown to `model` (index -1), as rating libraries
    answer them (Surprise: the global mean, plus the user's bias where the user is known): a known item for
    an unknown user is the model's cold-start rating (μ + b_i for biased models); an unknown item is the
    user's (or the cold-start) mean predicted rating over the `top` most rated items, weighted by how often
    each was rated in training."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    predictions = np.empty(len(users), dtype=np.float32)
    known_item = items >= 0
    if known_item.any():
        predictions[known_item] = model.predict(np.maximum(users[known_item], -1), items[known_item])
    if not known_item.all():
        counts = np.asarray(model.seen_.sum(axis=0)).ravel()
        popular = np.argsort(-counts, kind="stable")[: min(top, model.n_items)]
        weights = counts[popular] / max(counts[popular].sum(), 1)
        asked = np.maximum(users[~known_item], -1)
        distinct, where = np.unique(asked, return_inverse=True)
        means = np.empty(len(distinct))
        for rows in batched(len(distinct), max(1, 1_000_000 // len(popular))):  # a million predictions at a time
            block = model.predict(np.repeat(distinct[rows], len(popular)), np.tile(popular, len(distinct[rows])))
            means[rows] = block.reshape(-1, len(popular)).astype(np.float64) @ weights
        predictions[~known_item] = means[where]
    scale = model.rating_scale_
    return np.clip(predictions, *scale) if scale is not None else predictions


def _typed(values: pd.Series, vocabulary: Vocabulary) -> np.ndarray:
    """A file's ids in the vocabulary's type (integers stay integers also where the model does not know one)."""
    if vocabulary.ids.dtype.kind in "iu":
        return pd.to_numeric(values).astype(np.int64).to_numpy()
    return values.astype(str).to_numpy()


def recommend_file(
    model: Recommender,
    users: str | Path,
    *,
    k: int = 10,
    user: str = "user_id",
    sep: str | None = None,
    unknown: Unknown = "raise",
    exclude_seen: bool = True,
    batch_size: int | None = None,
    explain: bool = False,
    candidates: np.ndarray | None = None,
) -> pd.DataFrame:
    """Top-k for the users listed in a file (one per row, duplicates once), or for every user the model
    was trained on with `users="all"`: a long frame user, rank, item, score, served_by, note (why a list is
    shorter than k, or whatever else the routing had to say; mostly empty); with `explain`,
    also `because`: the ids of the user's items behind each item (`Recommender.explain`), largest first,
    joined by ";". `candidates` (item indices) restricts every list to those items."""
    if str(users) == "all":
        index = np.flatnonzero(model.known_users_)
    else:
        path = Path(users)
        frame = read_table(path, [user], sep)
        index, _, _ = _known_rows(frame, model, path, user, None, unknown)
        index = pd.unique(index)
    recommendations = model.recommend(
        np.asarray(index, np.int64),
        k,
        exclude_seen=exclude_seen,
        external_ids=False,
        batch_size=batch_size,
        candidates=candidates,
    )
    return batch_frame(recommendations, _because(model, recommendations) if explain else None)


def batch_frame(recommendations: Any, because: list[str] | None = None) -> pd.DataFrame:
    """A batch of lists as a file holds them (`recforge recommend --users`, `recforge spark score`): user,
    rank, item, score, served_by, note (and `because`, one entry per listed item, when given) — a row per
    listed item, and one row without rank, item or score for each user whose list is empty, in the users'
    order: a user with every candidate seen is still answered, and their note says why."""
    frame = recommendations.to_frame()
    listed = (recommendations.item_index >= 0).sum(axis=1)  # to_frame's rows: each user's listed items in order
    frame["note"] = np.repeat(recommendations.notes.astype(str), listed) if len(recommendations.notes) else ""
    if because is not None:
        frame["because"] = because
    empty = np.flatnonzero(listed == 0)
    if not len(empty):
        return frame
    rows = pd.DataFrame({"user": recommendations.users[empty], "note": recommendations.notes.astype(str)[empty]})
    if "served_by" in frame:
        rows["served_by"] = np.asarray(recommendations.served_by)[empty]
    order = np.concatenate([np.repeat(np.arange(len(listed)), listed), empty])  # each row's user position
    whole = {name: "Int64" for name, dtype in frame.dtypes.items() if pd.api.types.is_integer_dtype(dtype)}
    joined = pd.concat([frame.astype(whole), rows], ignore_index=True)[frame.columns]  # ids stay whole numbers
    return joined.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def _because(model: Recommender, recommendations: Any) -> list[str]:
    """One ";"-joined list of reason ids per row of `recommendations.to_frame()` (same order). Users are
    explained on as many threads as the thread policy gives (`recforge.threads`), each single-threaded
    inside: the scoring's sparse products release the GIL, and one user's work is too small to split
    (anime Kaggle, 5,000 users, the blend: 294 s on one thread, 157 s on two)."""
    from concurrent.futures import ThreadPoolExecutor

    from recforge.threads import choose_threads, thread_limit

    ids = model.items_.ids
    users = model.users_.index(recommendations.users)

    def explained(row: int) -> list[str]:
        listed = recommendations.item_index[row][recommendations.item_index[row] >= 0]
        reasons = explain_history(model, model.training_history(int(users[row])), listed)
        return [";".join(str(ids[r.item]) for r in item_reasons) for item_reasons in reasons]

    workers = min(choose_threads(), max(len(users), 1))
    with thread_limit(1), ThreadPoolExecutor(workers) as pool:
        return [text for listed in pool.map(explained, range(len(users))) for text in listed]


def check_table_output(path: str | Path) -> Path:
    """The output path of `write_table`, checked before any work: a known suffix, not a folder."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".parquet", ".pq", ".tsv"):
        raise DataFormatError("the output must end in .csv, .tsv or .parquet", path=path)
    check_output(path, False, kind="output file")
    return path


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """CSV or Parquet by the file's suffix, written atomically."""
    path = check_table_output(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
    return path


def summary_rows(evaluation: SavedEvaluation) -> dict[str, Any]:
    """The numbers `recforge evaluate` prints and writes."""
    out: dict[str, Any] = {"rows": evaluation.rows, "dropped_unknown": evaluation.dropped_unknown}
    out["ranking"] = {"protocol": evaluation.ranking.protocol, **evaluation.ranking.summary}
    if evaluation.rating is not None:
        out["rating"] = {"protocol": evaluation.rating.protocol, **evaluation.rating.summary}
    return out
