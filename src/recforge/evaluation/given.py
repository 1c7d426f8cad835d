"""Another tool's output scored by recforge's protocols, for the users of a split folder
(`recforge.data.split_files`): ranked lists (`evaluate_lists`: the metrics, per-user table and notes
`FullRankingEvaluator` gives a recforge model; also what `recforge recommend --users all --output` writes)
and predicted ratings (`evaluate_predictions`: `RatingEvaluator`'s RMSE, MAE and R²).

The lists are taken as given. A listed item the user had in training stays at its place and counts as a
miss (a recforge model never lists one: it excludes them before its top-k, as the full-ranking protocol
asks of every system), so the numbers of lists that repeat training items are lower, never flattered. A
test user without a list has an empty one (every metric 0), and metrics at a cut-off past a list's end
count the missing places as misses. The rank (or score) column only orders each user's list. Users
without test items are not scored. Predictions must cover every rated test pair (a missing one is an
error naming it, never left out: leaving out what a tool cannot predict flatters it) and are clipped to
the rating scale, as recforge's own are; predictions for other pairs are ignored and counted. An id the
split does not know, an item listed (or a pair predicted) twice, or a rank, score or prediction that is
not a finite number is an error naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.coldstart import RATINGS, Routing
from recforge.data.interactions import Interactions
from recforge.data.query import Query
from recforge.data.splits import Split
from recforge.errors import DataFormatError
from recforge.evaluation.protocols import FullRankingEvaluator, RankingResult, RatingEvaluator, RatingResult
from recforge.evaluation.saved import read_table, vocabulary_indices
from recforge.evaluation.stats import holm, paired_test

LISTS = "ranked lists as given (a listed training item counts as a miss)"


@dataclass
class ListsEvaluation:
    ranking: RankingResult
    rows: int  # rows of the file
    users_listed: int  # users with a list
    test_users_without_list: int
    listed_training_items: int  # listed items their user had in training (misses, where they stand)
    longest: int  # the longest list


@dataclass
class GivenLists:
    """Each user's list as scores that rank the listed items in their order and nothing else (-inf): what
    an evaluator asks of a model (`score_routed`), read from a (n_users, n_items) matrix of list places
    (the first place highest, every listed item above 0, the unlisted 0)."""

    places: sp.csr_matrix
    users: np.ndarray  # user index of each listed item, in list order
    items: np.ndarray  # item index of each listed item
    rows: int  # rows of the file
    longest: int
    name: str = "lists"

    @property
    def listed_users(self) -> np.ndarray:
        return np.unique(self.users)

    def score_routed(self, query: Query) -> tuple[np.ndarray, Routing]:
        scores = self.places[query.users].toarray()
        scores[scores == 0] = -np.inf
        paths = np.full(len(query), "lists", dtype=object)
        return scores, Routing(paths, np.full(len(query), "", dtype=object))


def read_lists(
    path: str | Path,
    data: Interactions,
    *,
    user: str = "user",
    item: str = "item",
    rank: str | None = "rank",
    score: str | None = None,
    sep: str | None = None,
    names: list[str] | None = None,
) -> GivenLists:
    """The lists in `path`, by `data`'s vocabularies. Each user's list is ordered by `rank` (ascending) or,
    when `score` is given instead, by score (descending); ties in file order."""
    if (rank is None) == (score is None):
        raise ValueError("order the lists by exactly one of rank (ascending) or score (descending)")
    path = Path(path)
    order_column = rank if rank is not None else score
    assert order_column is not None
    frame = read_table(path, [user, item, order_column], sep, names)
    # a user whose list is empty is one row without item and rank (`recforge recommend --users`, `spark score`)
    rows = len(frame)
    blank = _missing(frame[item]) & _missing(frame[order_column])
    frame = frame[~blank]
    users = _known(frame, user, vocabulary_indices(frame[user], data.users, path, user), path)
    items = _known(frame, item, vocabulary_indices(frame[item], data.items, path, item), path)
    key = _numbers(frame, order_column, path)
    pairs = users.astype(np.int64) * data.n_items + items
    repeated = pd.Series(pairs).duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataFormatError(
            f"item {frame[item].iloc[row]!r} is listed twice for user {frame[user].iloc[row]!r}",
            path=path,
            line=int(frame.index[row]),
        )
    # each user's list in order: by user, then rank ascending (or score descending), then file order
    order = np.lexsort((np.arange(len(key)), key if score is None else -key, users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, np.diff(users) != 0]) if len(users) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(users)])
    place = np.arange(len(users)) - np.repeat(starts, lengths)
    longest = int(lengths.max()) if len(lengths) else 0
    places = sp.csr_matrix(((longest - place).astype(np.float64), (users, items)), shape=(data.n_users, data.n_items))
    return GivenLists(places, users, items, rows, longest)


def _missing(values: pd.Series) -> np.ndarray:
    """True where a cell is empty: null, or blank text."""
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


def _known(frame: pd.DataFrame, column: str, found: np.ndarray, path: Path) -> np.ndarray:
    """`found` (vocabulary positions of `column`), or an error naming the first id the split does not know."""
    if (found < 0).any():
        row = int(np.flatnonzero(found < 0)[0])
        raise DataFormatError(
            f"{column} {frame[column].iloc[row]!r} is not in the split ({int((found < 0).sum())} such row(s)): "
            "the file must use the split files' ids",
            path=path,
            line=int(frame.index[row]),
            column=column,
        )
    return found


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """`column` as finite floats, or an error naming the first cell that is not one."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            f"{frame[column].iloc[row]!r} is not a number", path=path, line=int(frame.index[row]), column=column
        )
    return values


def score_lists(lists: GivenLists, evaluator: FullRankingEvaluator) -> ListsEvaluation:
    """`evaluator`'s metrics of the lists as given: its training items are not excluded (a listed one is a
    miss where it stands), and the notes say what the lists held."""
    if evaluator.exclude is not None or evaluator.sampled_negatives:
        raise ValueError("lists are scored as given: an evaluator without exclusion or sampling")
    ranking = evaluator.evaluate(lists)  # type: ignore[arg-type]
    trained = evaluator.train.to_csr("binary")
    listed = len(lists.users) > 0
    in_training = int(np.asarray(trained[lists.users, lists.items]).ravel().astype(bool).sum()) if listed else 0
    has_list = np.zeros(evaluator.test.n_users, dtype=bool)
    has_list[lists.users] = True
    without = int((~has_list[evaluator.users]).sum())
    n_listed = len(lists.listed_users)
    notes = [ranking.notes[0], f"{n_listed:,} users have a list (longest {lists.longest}), scored as given"]
    if without:
        notes.append(f"{without:,} test user(s) have no list: scored as empty lists (every metric 0)")
    if in_training:
        notes.append(f"{in_training:,} listed item(s) are in their user's training part: misses where they stand")
    unscored = int((~np.isin(lists.listed_users, evaluator.users)).sum())
    if unscored:
        notes.append(f"{unscored:,} listed user(s) have no test items: not scored")
    notes += ranking.notes[2:]  # the evaluator's own after "served by": e.g. test items never in training
    ranking = replace(ranking, protocol=LISTS, notes=notes)
    return ListsEvaluation(ranking, lists.rows, n_listed, without, in_training, lists.longest)


def evaluate_lists(
    path: str | Path,
    split: Split,
    *,
    user: str = "user",
    item: str = "item",
    rank: str | None = "rank",
    score: str | None = None,
    ks: tuple[int, ...] = (5, 10, 20),
    sep: str | None = None,
    names: list[str] | None = None,
) -> ListsEvaluation:
    """Full-ranking metrics of the lists in `path` against `split`'s test part (see `read_lists`)."""
    lists = read_lists(path, split.data, user=user, item=item, rank=rank, score=score, sep=sep, names=names)
    evaluator = FullRankingEvaluator(split.train, split.test, ks=ks, exclude_train=False, check_fit=False)
    return score_lists(lists, evaluator)


def against_first(per_user: list[pd.Series]) -> pd.DataFrame:
    """Each per-user metric (one per file, all on one split) against the first, paired by user: mean
    difference, Wilcoxon p and the Holm-adjusted p over the comparisons."""
    first = per_user[0]
    rows = []
    for values in per_user[1:]:
        test = paired_test(values.reindex(first.index).to_numpy(), first.to_numpy())
        rows.append({"difference": test.mean_difference, "p": test.p_value, "users": test.n})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table["p"].to_numpy())
    return table


@dataclass
class PredictionsEvaluation:
    rating: RatingResult
    rows: int  # rows of the file
    unused: int  # predictions for pairs that are not rated test pairs


class _GivenPredictions:
    """A rating per (user, item) pair, answered to `RatingEvaluator` as a model's `predict`."""

    name = "predictions"
    capabilities = frozenset({RATINGS})
    rating_scale_ = None

    def __init__(self, keys: pd.Index, values: np.ndarray, n_items: int) -> None:
        self.keys, self.values, self.n_items = keys, values, n_items

    def predict(self, users: np.ndarray, items: np.ndarray, history: object = None) -> np.ndarray:
        positions = self.keys.get_indexer(users.astype(np.int64) * self.n_items + items)
        assert (positions >= 0).all()  # evaluate_predictions checked every rated test pair first
        return self.values[positions]


def evaluate_predictions(
    path: str | Path,
    split: Split,
    *,
    user: str = "user_id",
    item: str = "item_id",
    prediction: str = "prediction",
    sep: str | None = None,
    names: list[str] | None = None,
) -> PredictionsEvaluation:
    """RMSE, MAE and R² of the predicted ratings in `path` on `split`'s rated test pairs (clipped to the
    data's rating scale). `recforge predict` writes this layout (user_id, item_id, prediction)."""
    path = Path(path)
    frame = read_table(path, [user, item, prediction], sep, names)
    data = split.data
    users = _known(frame, user, vocabulary_indices(frame[user], data.users, path, user), path)
    items = _known(frame, item, vocabulary_indices(frame[item], data.items, path, item), path)
    values = _numbers(frame, prediction, path)
    keys = pd.Index(users.astype(np.int64) * data.n_items + items)
    if keys.has_duplicates:
        row = int(np.flatnonzero(keys.duplicated())[0])
        raise DataFormatError(
            f"user {frame[user].iloc[row]!r} and item {frame[item].iloc[row]!r} are predicted twice",
            path=path,
            line=int(frame.index[row]),
        )
    evaluator = RatingEvaluator(split.train, split.test, check_fit=False)
    rated = evaluator.test
    wanted = rated.user_index.astype(np.int64) * data.n_items + rated.item_index
    missing = keys.get_indexer(wanted) < 0
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataFormatError(
            f"no prediction for user {data.users.ids[rated.user_index[first]]!r} and item "
            f"{data.items.ids[rated.item_index[first]]!r} ({int(missing.sum())} of {len(wanted)} rated test pairs "
            "lack one): every rated test pair needs a prediction, or the error of what a tool cannot predict goes "
            "unmeasured",
            path=path,
        )
    result = evaluator.evaluate(_GivenPredictions(keys, values, data.n_items))  # type: ignore[arg-type]
    unused = int(len(keys) - len(np.unique(wanted)))
    if unused:
        result.notes.append(f"{unused:,} predictions are for pairs that are not rated test pairs: not scored")
    return PredictionsEvaluation(result, len(frame), unused)
