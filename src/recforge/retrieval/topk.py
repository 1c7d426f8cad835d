"""Exact top-k over score matrices: a partial selection (torch.topk, else argpartition) + sort, with seen
items masked through CSR rows.

This is the one kernel every model's `recommend` and every evaluator uses, so exclusion rules and tie
handling are identical everywhere. Ties are broken by the lower item index (a stable, documented rule).
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp


def mask_items(scores: np.ndarray, exclude: sp.csr_matrix | None, rows: np.ndarray | None = None) -> np.ndarray:
    """Set scores of excluded items to -inf in place. `exclude` rows align with `scores` rows, or are
    selected by `rows` (indices into `exclude`). Returns `scores`."""
    if exclude is None:
        return scores
    block = exclude if rows is None else exclude[rows]
    block = block.tocsr()
    row_index = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    scores[row_index, block.indices] = -np.inf
    return scores


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best items per row, best first.

    Shapes: scores (b, n) -> (b, k') with k' = min(k, n). Entries at -inf (excluded) come back as
    index -1 and score -inf, so a user with fewer than k candidates gets a short list, never an
    excluded item. Ties go to the lower item index, also at the k-th place.
    """
    scores = np.asarray(scores)
    n = scores.shape[1]
    k = min(k, n)
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64), np.zeros((scores.shape[0], 0), dtype=scores.dtype)
    # k + 1 candidates: where the k-th and (k+1)-th differ, nothing outside the candidates ties the k-th
    wanted = min(k + 1, n)
    candidates = _partition(scores, wanted) if wanted < n else np.broadcast_to(np.arange(n), scores.shape).copy()
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -candidate_scores), axis=1)  # score desc, then item index asc
    indices = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    top_scores = np.take_along_axis(candidate_scores, order, axis=1)
    if wanted < n:
        kth, next_best = top_scores[:, k - 1], top_scores[:, k]
        # a tie at the boundary may hide equal scores at lower indices outside the candidates: sort those
        # rows fully (rows whose k-th place is already excluded need no order among the excluded)
        tied = np.flatnonzero((kth == next_best) & ~(np.isneginf(kth)))
        if len(tied):
            tied_scores = scores[tied]
            best = _first_k_at_a_tie(tied_scores, kth[tied], k)
            indices[tied, :k] = best
            top_scores[tied, :k] = np.take_along_axis(tied_scores, best, axis=1)
    indices, top_scores = indices[:, :k], top_scores[:, :k]
    indices[np.isneginf(top_scores)] = -1
    return indices, top_scores


def _first_k_at_a_tie(scores: np.ndarray, kth: np.ndarray, k: int) -> np.ndarray:
    """Top k of rows whose k-th score `kth` ties scores outside the candidates, ordered by score desc then
    index asc: every score above the k-th, then the lowest indices scoring exactly the k-th. Linear per
    row (a comparison and a running count), where a full sort cost n log n: popularity, whose counts tie
    in every row, spent 10 of its 15 s evaluating 35,598 users over 18,357 items in that sort."""
    above = scores > kth[:, None]
    at = scores == kth[:, None]
    chosen = above | (at & (np.cumsum(at, axis=1) <= (k - above.sum(axis=1))[:, None]))
    # exactly k per row, unless a NaN hides among the scores: those rows take the full stable sort
    exact = chosen.sum(axis=1) == k
    best = np.empty((len(scores), k), dtype=np.int64)
    if exact.any():
        columns = np.nonzero(chosen[exact])[1].reshape(-1, k)  # row-major: each row's k in index order
        values = np.take_along_axis(scores[exact], columns, axis=1)
        # columns ascend, so a stable sort by score alone breaks ties by the lower index
        best[exact] = np.take_along_axis(columns, np.argsort(-values, axis=1, kind="stable"), axis=1)
    if not exact.all():
        best[~exact] = np.argsort(-scores[~exact], axis=1, kind="stable")[:, :k]
    return best


# score blocks at least this large go through torch.topk even when torch is not loaded yet
TORCH_TOPK_ELEMENTS = 1 << 22


def _partition(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of k largest scores per row, in no particular order. torch.topk is ~5x faster than
    np.argpartition on a 100k-item row (one CPU core); it is used when torch is loaded, or imported for
    blocks big enough to repay the import. Other dtypes and read-only views use numpy. Both select the
    same set (the caller breaks ties), so results do not depend on which one ran."""
    fast = scores.dtype in (np.float32, np.float64) and scores.flags.writeable and scores.flags.c_contiguous
    if fast and ("torch" in sys.modules or scores.size >= TORCH_TOPK_ELEMENTS):
        import torch

        return torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()
    return np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]


def batched(n: int, batch_size: int):
    """Slices covering range(n) in order, each at most batch_size long."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def default_batch_size(n_items: int, budget_bytes: int = 256 << 20) -> int:
    """Rows of a float32 (rows x n_items) score block that fit in `budget_bytes` (at least 1)."""
    return max(1, min(4096, budget_bytes // (4 * max(1, n_items))))
