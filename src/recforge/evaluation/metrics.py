"""Metrics as pure functions over arrays, vectorised over users. Definitions (what reports cite):

Ranking metrics take `relevance` (n_users, K): the gain of the item at each rank of the user's list
(0 = not relevant, padding counts as 0), `n_relevant` (n_users,): how many test items the user has,
and for NDCG `ideal` (n_users, K): the user's test gains sorted in decreasing order (zero-padded).
For a cut-off k <= K:

- Precision@k = hits in the top k / k                       (a short list still divides by k)
- Recall@k    = hits in the top k / n_relevant
- HitRate@k   = 1 if any hit in the top k else 0
- MRR@k       = 1 / rank of the first hit within the top k, 0 if none
- MAP@k       = sum over hit ranks r <= k of Precision@r, divided by min(n_relevant, k)
- NDCG@k      = DCG@k / IDCG@k, DCG@k = sum_r gain_r / log2(r + 1); IDCG uses the top min(n_relevant, k)
                ideal gains. Binary relevance uses gain 1; graded relevance uses the gain you pass
                (the evaluator offers the rating itself, trec_eval's convention, or 2^rating - 1).

Users with no relevant item have undefined recall/NDCG/MAP; the evaluator leaves them out and says so.
"""

from __future__ import annotations

import numpy as np

# Metric names whose smaller values are better; every other metric (NDCG, recall, coverage, ...) is
# better larger. The one table experiments, reports, tuning and early stopping consult.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "mse", "avg_popularity", "gini", "loss", "valid_rmse", "valid_loss"})


# the cut-offs of TF-Recommenders' FactorizedTopK accuracy, reported by evaluators and two-tower validation
TOPK_ACCURACY_KS = (1, 5, 10, 50, 100)

# per-user ranking metrics, each named at a cut-off ("ndcg@10"), and the rating metrics: the names configs,
# reports, tuning and the CLI accept and show
RANKING_METRICS = ("ndcg", "recall", "precision", "map", "hit_rate", "mrr")
RATING_METRICS = ("rmse", "mae", "mse", "r2")


def at_cutoffs(ks: list[int] | tuple[int, ...], names: tuple[str, ...] = RANKING_METRICS) -> list[str]:
    """Every ranking metric name at every cut-off, cut-off by cut-off: ["ndcg@5", "recall@5", ...]."""
    return [f"{name}@{k}" for k in ks for name in names]


def metric_problem(metric: str, ks: list[int] | None = None) -> str | None:
    """Why `metric` cannot be asked for (None when it can): a rating metric, or a ranking metric at a
    positive cut-off, one of `ks` when they are given."""
    name, _, k = metric.partition("@")
    if metric in RATING_METRICS:
        return None
    if name in RANKING_METRICS and k.isdigit() and int(k) > 0:
        if ks is None or int(k) in ks:
            return None
        choices = at_cutoffs(ks, (name,))
        return f"{metric!r} is not measured: ks are {list(ks)}; use one of {choices} or add its cut-off to ks"
    ranking = ", ".join(RANKING_METRICS)
    return f"unknown metric {metric!r}; use {ranking} at a cut-off (e.g. ndcg@10) or {list(RATING_METRICS)}"


def direction(metric: str) -> str:
    """ "min" when smaller values of `metric` (e.g. "rmse", "valid_rmse") are better, else "max"."""
    return "min" if metric.split("@")[0] in LOWER_IS_BETTER else "max"


def better(metric: str, value: float, than: float) -> bool:
    """Whether `value` is strictly better than `than` for `metric`."""
    return value < than if direction(metric) == "min" else value > than


# ----------------------------------------------------------------------------- rating prediction
def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    diff = np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64)
    return float(np.mean(diff**2))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(mse(y_true, y_pred)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64))))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination: 1 - SS_res / SS_tot (0 for predicting the test mean; can be < 0)."""
    y_true = np.asarray(y_true, np.float64)
    residual = np.sum((y_true - np.asarray(y_pred, np.float64)) ** 2)
    total = np.sum((y_true - y_true.mean()) ** 2)
    return float(1.0 - residual / total) if total > 0 else float("nan")


# ----------------------------------------------------------------------------- ranking
def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _hits(relevance: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(relevance, np.float64)[:, :k] > 0


def precision_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    return _hits(relevance, k).sum(axis=1) / k


def recall_at_k(relevance: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return _hits(relevance, k).sum(axis=1) / np.asarray(n_relevant, np.float64)


def hit_rate_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    return _hits(relevance, k).any(axis=1).astype(np.float64)


def reciprocal_rank_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    hits = _hits(relevance, k)
    first = np.argmax(hits, axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def average_precision_at_k(relevance: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    hits = _hits(relevance, k)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    denominator = np.minimum(np.asarray(n_relevant, np.float64), k)
    return (precision_at_rank * hits).sum(axis=1) / denominator


def dcg_at_k(gains: np.ndarray, k: int) -> np.ndarray:
    gains = np.asarray(gains, np.float64)[:, :k]
    return gains @ _discounts(gains.shape[1])


def ndcg_at_k(gains: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    """NDCG with explicit gains; `ideal` holds the user's relevant gains sorted decreasingly."""
    return dcg_at_k(gains, k) / dcg_at_k(ideal, k)


def curves(relevance: np.ndarray, ideal: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Mean Precision/Recall/NDCG/HitRate at every k = 1..K in one pass: each (K,)."""
    hits = np.asarray(relevance, np.float64) > 0
    k_values = np.arange(1, hits.shape[1] + 1)
    cum_hits = np.cumsum(hits, axis=1)
    discounts = _discounts(hits.shape[1])
    dcg = np.cumsum(np.asarray(relevance, np.float64) * discounts, axis=1)
    idcg = np.cumsum(np.asarray(ideal, np.float64) * discounts, axis=1)
    return {
        "precision": (cum_hits / k_values).mean(axis=0),
        "recall": (cum_hits / np.asarray(n_relevant, np.float64)[:, None]).mean(axis=0),
        "ndcg": (dcg / idcg).mean(axis=0),
        "hit_rate": (cum_hits > 0).mean(axis=0),
    }


def topk_accuracy(pair_ranks: np.ndarray, k: int) -> float:
    """TF-Recommenders' FactorizedTopK accuracy: the share of held-out (user, item) pairs whose item
    ranks in the user's top k (`pair_ranks` are 0-based; anything beyond the computed cut-off is inf)."""
    pair_ranks = np.asarray(pair_ranks)
    return float(np.mean(pair_ranks < k)) if len(pair_ranks) else float("nan")


# ----------------------------------------------------------------------------- beyond accuracy
def catalogue_coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one list (`recommended` holds item indices, -1 = pad)."""
    items = np.asarray(recommended).ravel()
    return float(len(np.unique(items[items >= 0])) / n_items)


def novelty(recommended: np.ndarray, item_probability: np.ndarray) -> np.ndarray:
    """Per list, the mean self-information -log2 p(i) of its items, with p(i) the share of training
    users who interacted with i (Zhou et al. 2010). Items never seen in training get p = 1/(n_users+1)."""
    recommended = np.asarray(recommended)
    valid = recommended >= 0
    info = -np.log2(np.asarray(item_probability, np.float64)[np.maximum(recommended, 0)])
    return np.where(valid, info, 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def intra_list_diversity(recommended: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Per list, the mean pairwise cosine distance (1 - cos) between its items' vectors (features or
    embeddings). Lists with fewer than two items score 0."""
    recommended = np.asarray(recommended)
    vectors = np.asarray(item_vectors, np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    valid = recommended >= 0
    stacked = unit[np.maximum(recommended, 0)] * valid[..., None]
    similarity = stacked @ stacked.transpose(0, 2, 1)
    n = valid.sum(axis=1)
    pair_count = n * (n - 1)
    off_diagonal = similarity.sum(axis=(1, 2)) - (stacked**2).sum(axis=(1, 2))
    mean_similarity = np.divide(off_diagonal, pair_count, out=np.ones(len(n)), where=pair_count > 0)
    return np.where(pair_count > 0, 1.0 - mean_similarity, 0.0)


def average_popularity(recommended: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    """Per list, the mean training interaction count of its items (ARP, Abdollahpouri et al. 2019)."""
    recommended = np.asarray(recommended)
    valid = recommended >= 0
    counts = np.asarray(item_counts, np.float64)[np.maximum(recommended, 0)]
    return np.where(valid, counts, 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def gini_index(recommended: np.ndarray, n_items: int) -> float:
    """Gini coefficient of how often each catalogue item is recommended (0 = perfectly even, 1 = one item)."""
    items = np.asarray(recommended).ravel()
    counts = np.sort(np.bincount(items[items >= 0], minlength=n_items).astype(np.float64))
    if counts.sum() == 0:
        return float("nan")
    index = np.arange(1, n_items + 1)
    return float(np.sum((2 * index - n_items - 1) * counts) / (n_items * counts.sum()))


# ----------------------------------------------------------------------------- single target per query
def ndcg_from_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of queries with one relevant item at 0-based rank `ranks` (inf = not ranked): 1/log2(r + 2)
    inside the top k, else 0 (the ideal DCG of a single item is 1)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def hit_rate_from_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 where the single relevant item ranks in the top k (0-based `ranks`), else 0."""
    return (np.asarray(ranks, dtype=np.float64) < k).astype(np.float64)


def reciprocal_rank_from_ranks(ranks: np.ndarray) -> np.ndarray:
    """1 / (rank + 1) of the single relevant item (0 when it is not ranked: rank inf)."""
    return 1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0)
