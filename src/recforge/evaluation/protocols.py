"""Evaluation protocols: full ranking (the default and the honest one), rating prediction, next-item
(leave-one-out) and — only when asked for by name — sampled-negatives ranking.

Every protocol keeps per-user metric arrays (for confidence intervals and paired significance tests)
and says in `protocol` exactly how the numbers were made, so tables can print it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.coldstart import RATINGS
from recforge.data.interactions import Interactions
from recforge.data.query import Query
from recforge.data.splits import Split
from recforge.evaluation import metrics as M
from recforge.evaluation.guards import check_fitted_on
from recforge.models.base import Recommendations, Recommender
from recforge.retrieval.topk import batched, default_batch_size, mask_items, topk


@dataclass
class RankingResult:
    protocol: str
    per_user: pd.DataFrame
    summary: dict[str, float]
    curves: dict[str, list[float]]
    topk_accuracy: dict[str, float]
    recommended: Recommendations  # each test user's top max(ks) list; users are user indices here
    notes: list[str] = field(default_factory=list)
    predict_seconds: float = 0.0


@dataclass
class RatingResult:
    protocol: str
    per_user: pd.DataFrame
    summary: dict[str, float]
    predictions: np.ndarray
    notes: list[str] = field(default_factory=list)
    predict_seconds: float = 0.0


class FullRankingEvaluator:
    """Scores every item for every test user (in memory-bounded batches), removes items the user had in
    training (`exclude_train`, default on), and computes ranking metrics against the test items.

    - `relevance="binary"`: every test interaction (rated >= `relevance_threshold`, if set) is relevant
      with gain 1. `relevance="graded"`: gain = rating (`gain="linear"`, trec_eval's convention) or
      2^rating - 1 (`gain="exponential"`).
    - `history`: interactions given to history-capable models at query time and also excluded (the
      next-item protocol passes train + validation here). Other models score from their training state.
    - `sampled_negatives=N` switches to the sampled protocol: each test pair is ranked against N items
      the user never interacted with; the protocol name says so in every table.
    """

    def __init__(
        self,
        train: Interactions,
        test: Interactions,
        *,
        ks: tuple[int, ...] = (5, 10, 20),
        exclude_train: bool = True,
        relevance: Literal["binary", "graded"] = "binary",
        gain: Literal["linear", "exponential"] = "linear",
        relevance_threshold: float | None = None,
        history: Interactions | None = None,
        curve_k: int = 100,
        batch_size: int | None = None,
        sampled_negatives: int | None = None,
        seed: int = 0,
        item_vectors: np.ndarray | None = None,
        check_fit: bool = True,
    ) -> None:
        if not ks or min(ks) < 1:
            raise ValueError("ks must be positive cut-offs")
        self.train, self.test = train, test
        self.ks = tuple(sorted(set(ks)))
        self.exclude_train = exclude_train
        self.history = history
        self.sampled_negatives = sampled_negatives
        self.seed = seed
        self.item_vectors = item_vectors
        self.check_fit = check_fit
        self.cut = max(max(self.ks), curve_k, max(M.TOPK_ACCURACY_KS))
        self.batch_size = batch_size or default_batch_size(test.n_items)
        test_rows = test.latest_per_pair()
        keep = np.ones(len(test_rows), dtype=bool)
        if relevance_threshold is not None:
            if test.rating is None:
                raise ValueError("relevance_threshold needs rated test data")
            keep &= np.nan_to_num(test.rating[test_rows], nan=-np.inf) >= relevance_threshold
        test_rows = test_rows[keep]
        if relevance == "graded":
            if test.rating is None:
                raise ValueError("graded relevance needs rated test data")
            values = test.rating[test_rows].astype(np.float64)
            values = values if gain == "linear" else 2.0**values - 1.0
        else:
            values = np.ones(len(test_rows))
        self.gains = sp.csr_matrix(
            (values, (test.user_index[test_rows], test.item_index[test_rows])), shape=(test.n_users, test.n_items)
        )
        self.gains.sum_duplicates()  # canonical: sorted column indices per row (the lookups below rely on it)
        self.pairs = (test.user_index[test_rows].astype(np.int64), test.item_index[test_rows].astype(np.int64))
        self.users = np.flatnonzero(self.gains.getnnz(axis=1) > 0)
        seen = history if history is not None else train
        self.exclude = seen.to_csr("binary") if (exclude_train or history is not None) else None
        self.protocol = (
            f"sampled ({sampled_negatives} negatives per test item)"
            if sampled_negatives
            else "full ranking" + (", training items excluded" if self.exclude is not None else ", nothing excluded")
        )
        self.relevance_label = relevance if relevance == "binary" else f"graded ({gain} gain)"

    # ------------------------------------------------------------------ helpers
    def _scores(self, model: Recommender, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of test users and the path that served each (`recforge.coldstart`): with a `history`,
        every model gets the query-time history and the router decides whether it can use it."""
        query = Query.from_interactions(self.history, users) if self.history is not None else Query.known(users)
        scores, routing = model.score_routed(query)
        if self.exclude is not None:
            mask_items(scores, self.exclude, users)
        return scores, routing.paths + np.where(routing.notes != "", " (" + routing.notes.astype(str) + ")", "")

    def evaluate(self, model: Recommender) -> RankingResult:
        if self.check_fit:
            check_fitted_on(model, self.train)
        if self.sampled_negatives:
            return self._evaluate_sampled(model)
        started = time.perf_counter()
        cut = min(self.cut, self.test.n_items)
        relevance_blocks, ideal_blocks, recommended_blocks, score_blocks, pair_ranks = [], [], [], [], []
        pair_users, pair_items = self.pairs
        order = np.argsort(pair_users, kind="stable")
        pair_users, pair_items = pair_users[order], pair_items[order]
        served: list[np.ndarray] = []
        for rows in batched(len(self.users), self.batch_size):
            users = self.users[rows]
            scores, paths = self._scores(model, users)
            served.append(paths)
            top_index, top_scores = topk(scores, cut)
            del scores
            score_blocks.append(top_scores[:, : max(self.ks)])
            gains = self.gains[users]
            relevance_blocks.append(_gains_at(gains, top_index))
            ideal_blocks.append(_ideal_gains(gains, cut))
            recommended_blocks.append(top_index)
            lo, hi = np.searchsorted(pair_users, [users[0], users[-1] + 1])
            local = np.searchsorted(users, pair_users[lo:hi])
            pair_ranks.append(_ranks_of(top_index, local, pair_items[lo:hi]))
        elapsed = time.perf_counter() - started
        relevance = np.concatenate(relevance_blocks)
        ideal = np.concatenate(ideal_blocks)
        recommended = np.concatenate(recommended_blocks)
        n_relevant = self.gains.getnnz(axis=1)[self.users]
        per_user = self._per_user(relevance, ideal, n_relevant)
        per_user = per_user.join(self._beyond_accuracy(recommended[:, : max(self.ks)]))
        ranks = np.concatenate(pair_ranks) if pair_ranks else np.zeros(0)
        notes = self._notes(np.concatenate(served) if served else np.zeros(0, object))
        return RankingResult(
            protocol=self.protocol,
            per_user=per_user,
            summary=self._summary(per_user, recommended),
            curves={name: values.tolist() for name, values in M.curves(relevance, ideal, n_relevant).items()},
            topk_accuracy={f"top{k}_accuracy": M.topk_accuracy(ranks, k) for k in M.TOPK_ACCURACY_KS if k <= cut},
            recommended=Recommendations(
                users=self.users,
                item_index=recommended[:, : max(self.ks)],
                items=np.where(
                    recommended[:, : max(self.ks)] >= 0,
                    self.test.items.lookup(np.maximum(recommended[:, : max(self.ks)], 0)),
                    None,
                ),
                scores=np.concatenate(score_blocks) if score_blocks else np.zeros((0, 0), np.float32),
                served_by=np.concatenate(served) if served else np.zeros(0, object),
            ),
            notes=notes,
            predict_seconds=elapsed,
        )

    def _per_user(self, relevance: np.ndarray, ideal: np.ndarray, n_relevant: np.ndarray) -> pd.DataFrame:
        columns: dict[str, np.ndarray] = {"user": self.users, "n_relevant": n_relevant}
        for k in self.ks:
            columns[f"ndcg@{k}"] = M.ndcg_at_k(relevance, ideal, k)
            columns[f"recall@{k}"] = M.recall_at_k(relevance, n_relevant, k)
            columns[f"precision@{k}"] = M.precision_at_k(relevance, k)
            columns[f"map@{k}"] = M.average_precision_at_k(relevance, n_relevant, k)
            columns[f"hit_rate@{k}"] = M.hit_rate_at_k(relevance, k)
            columns[f"mrr@{k}"] = M.reciprocal_rank_at_k(relevance, k)
        return pd.DataFrame(columns).set_index("user")

    def _beyond_accuracy(self, recommended: np.ndarray) -> pd.DataFrame:
        counts = self.train.item_counts()
        n_train_users = max(1, int((self.train.user_counts() > 0).sum()))
        probability = (
            np.maximum(
                np.bincount(self.train.item_index[self.train.latest_per_pair()], minlength=self.train.n_items), 1e-12
            )
            / n_train_users
        )
        probability = np.where(counts > 0, probability, 1.0 / (n_train_users + 1))
        columns = {
            "novelty": M.novelty(recommended, probability),
            "avg_popularity": M.average_popularity(recommended, counts),
        }
        if self.item_vectors is not None:
            columns["diversity"] = M.intra_list_diversity(recommended, self.item_vectors)
        return pd.DataFrame(columns, index=pd.Index(self.users, name="user"))

    def _summary(self, per_user: pd.DataFrame, recommended: np.ndarray) -> dict[str, float]:
        summary = {column: float(per_user[column].mean()) for column in per_user.columns if column != "n_relevant"}
        top = recommended[:, : max(self.ks)]
        summary["coverage"] = M.catalogue_coverage(top, self.test.n_items)
        summary["gini"] = M.gini_index(top, self.test.n_items)
        return summary

    def _notes(self, served: np.ndarray) -> list[str]:
        notes = [f"{len(self.users)} test users, relevance {self.relevance_label}"]
        paths, counts = np.unique(served.astype(str), return_counts=True)
        notes.append("served by " + ", ".join(f"{path}: {count}" for path, count in zip(paths, counts, strict=True)))
        # a saved model's test file may name items past its catalogue (`evaluate_saved(unknown="miss")`)
        counts = np.zeros(max(self.test.n_items, self.train.n_items), dtype=np.int64)
        counts[: self.train.n_items] = self.train.item_counts()
        unseen = int((counts[self.pairs[1]] == 0).sum())
        if unseen:
            notes.append(f"{unseen} test pair(s) have an item never seen in training")
        if self.exclude is not None and len(self.pairs[0]):
            inside = (self.pairs[0] < self.exclude.shape[0]) & (self.pairs[1] < self.exclude.shape[1])
            excluded = np.zeros(len(self.pairs[0]), dtype=bool)
            excluded[inside] = np.asarray(self.exclude[self.pairs[0][inside], self.pairs[1][inside]]).ravel() > 0
            if excluded.any():
                notes.append(
                    f"{int(excluded.sum())} of {len(excluded)} test pair(s) are also in the training data, whose "
                    "items are excluded from the lists, so they can never be found"
                    + (": is the test file part of the training data?" if excluded.mean() > 0.5 else "")
                )
        return notes

    def _evaluate_sampled(self, model: Recommender) -> RankingResult:
        """Each test pair vs N sampled negatives (items the user has in neither train nor test)."""
        started = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        n_items = self.test.n_items
        n = int(self.sampled_negatives)
        pair_users, pair_items = self.pairs
        positive = self.gains.copy()
        positive.data[:] = 1
        forbidden = (positive + (self.exclude if self.exclude is not None else 0)).tocsr()
        ranks = np.empty(len(pair_users))
        for rows in batched(len(pair_users), max(1, self.batch_size)):
            users = pair_users[rows]
            negatives = rng.integers(0, n_items, size=(len(users), n))
            # resample collisions with the user's own items (vectorised rejection rounds)
            for _ in range(50):
                clash = np.asarray(forbidden[np.repeat(users, n), negatives.ravel()]).reshape(negatives.shape) > 0
                if not clash.any():
                    break
                negatives[clash] = rng.integers(0, n_items, size=int(clash.sum()))
            unique_users, local = np.unique(users, return_inverse=True)
            scores = self._scores(model, unique_users)[0][local]
            positive_scores = scores[np.arange(len(users)), pair_items[rows]]
            negative_scores = np.take_along_axis(scores, negatives, axis=1)
            ranks[rows] = (negative_scores > positive_scores[:, None]).sum(axis=1)
        frame = pd.DataFrame({"user": pair_users, "rank": ranks})
        for k in self.ks:
            frame[f"hit_rate@{k}"] = M.hit_rate_from_ranks(ranks, k)
            frame[f"ndcg@{k}"] = M.ndcg_from_ranks(ranks, k)
        frame["mrr"] = M.reciprocal_rank_from_ranks(ranks)
        per_user = frame.drop(columns="rank").groupby("user").mean()
        summary = {column: float(per_user[column].mean()) for column in per_user.columns}
        return RankingResult(
            protocol=self.protocol,
            per_user=per_user,
            summary=summary,
            curves={},
            topk_accuracy={},
            recommended=Recommendations(
                users=np.zeros(0, np.int64),
                item_index=np.zeros((0, 0), np.int64),
                items=np.zeros((0, 0), np.int64),
                scores=np.zeros((0, 0), np.float32),
            ),
            notes=[f"SAMPLED protocol: {n} negatives per test item; not comparable with full-ranking numbers"],
            predict_seconds=time.perf_counter() - started,
        )


class RatingEvaluator:
    """RMSE/MAE/MSE/R² of predicted ratings on the rated test pairs, clipped to the rating scale.
    `history`: interactions given at query time (a user-disjoint split's fold-in part); users with rows
    there are predicted from them (`Recommender.predict`)."""

    def __init__(
        self,
        train: Interactions,
        test: Interactions,
        *,
        clip: bool = True,
        check_fit: bool = True,
        history: Interactions | None = None,
    ) -> None:
        self.train = train
        self.history = history
        self.test = test.explicit()
        self.clip = clip
        self.check_fit = check_fit
        self.protocol = "rating prediction on held-out rated pairs" + (", clipped to the scale" if clip else "")

    def evaluate(self, model: Recommender) -> RatingResult:
        if RATINGS not in model.capabilities:
            raise ValueError(f"{model.name} does not predict ratings")
        if self.check_fit:
            check_fitted_on(model, self.train)
        started = time.perf_counter()
        predictions = model.predict(self.test.user_index, self.test.item_index, self.history).astype(np.float64)
        elapsed = time.perf_counter() - started
        scale = self.test.rating_scale or model.rating_scale_
        if self.clip and scale is not None:
            predictions = np.clip(predictions, *scale)
        truth = self.test.rating.astype(np.float64)
        errors = predictions - truth
        frame = pd.DataFrame({"user": self.test.user_index, "sq": errors**2, "abs": np.abs(errors)})
        per_user = frame.groupby("user").agg(n_ratings=("sq", "size"), mse=("sq", "mean"), mae=("abs", "mean"))
        summary = {
            "rmse": M.rmse(truth, predictions),
            "mae": M.mae(truth, predictions),
            "mse": M.mse(truth, predictions),
            "r2": M.r2(truth, predictions),
        }
        return RatingResult(
            protocol=self.protocol,
            per_user=per_user,
            summary=summary,
            predictions=predictions,
            notes=[f"{len(truth)} rated test pairs from {len(per_user)} users"],
            predict_seconds=elapsed,
        )


def next_item_evaluator(split: Split, ks: tuple[int, ...] = (5, 10, 20), **options: object) -> FullRankingEvaluator:
    """Leave-one-out next-item protocol: the test item is the target, the user's train + validation
    interactions are the query-time history and are excluded from the ranking. `hit_rate@1` is the
    share of exact next-item hits."""
    history_rows = (
        split.train_rows if split.valid_rows is None else np.concatenate([split.train_rows, split.valid_rows])
    )
    history = split.data.subset(history_rows)
    return FullRankingEvaluator(split.train, split.test, ks=tuple(sorted({1, *ks})), history=history, **options)


# ---------------------------------------------------------------------------------------------------------
# Per-batch lookups on the sparse test gains: a batch never densifies (users x items) gains or ranks, which
# cost more time and memory than the scores themselves on large catalogues.


def _entry_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """row * n_columns + column for every stored entry, ascending for a canonical CSR matrix."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def _gains_at(gains: sp.csr_matrix, top_index: np.ndarray) -> np.ndarray:
    """gains[r, top_index[r, j]] for every position (0 where the list is short: index -1)."""
    result = np.zeros(top_index.shape)
    if gains.nnz == 0:
        return result
    keys = _entry_keys(gains)
    query = np.arange(top_index.shape[0], dtype=np.int64)[:, None] * gains.shape[1] + np.maximum(top_index, 0)
    position = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = (keys[position] == query) & (top_index >= 0)
    result[hit] = gains.data[position[hit]]
    return result


def _ideal_gains(gains: sp.csr_matrix, cut: int) -> np.ndarray:
    """Each row's `cut` largest gains over the whole catalogue, descending (zeros for unstored items)."""
    ideal = np.zeros((gains.shape[0], cut))
    if gains.nnz == 0:
        return ideal
    if gains.data.min() < 0:  # unstored items (gain 0) outrank negative gains: take the exact dense route
        dense = gains.toarray()
        top = -np.partition(-dense, cut - 1, axis=1)[:, :cut] if dense.shape[1] > cut else dense
        return -np.sort(-top, axis=1)
    rows = np.repeat(np.arange(gains.shape[0]), np.diff(gains.indptr))
    order = np.lexsort((-gains.data, rows))
    rank_in_row = np.arange(gains.nnz) - np.repeat(gains.indptr[:-1], np.diff(gains.indptr))
    keep = rank_in_row < cut
    ideal[rows[keep], rank_in_row[keep]] = gains.data[order][keep]
    return ideal


def _ranks_of(top_index: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """0-based position of (rows[i], items[i]) in the top lists, inf where it is not listed."""
    width = np.int64(max(int(top_index.max(initial=0)), int(items.max(initial=0))) + 1)
    listed = top_index >= 0
    keys = (np.arange(top_index.shape[0], dtype=np.int64)[:, None] * width + top_index)[listed]
    positions = np.broadcast_to(np.arange(top_index.shape[1]), top_index.shape)[listed]
    order = np.argsort(keys)
    keys, positions = keys[order], positions[order]
    ranks = np.full(len(rows), np.inf)
    if len(keys) == 0:
        return ranks
    query = rows.astype(np.int64) * width + items
    found = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = keys[found] == query
    ranks[hit] = positions[found[hit]]
    return ranks
