"""RP3β (Paudel et al. 2017; the strong graph baseline of Dacrema et al. 2019): a three-step random walk
on the user-item graph, item → user → item, with the landing item's popularity divided out.

With P_ui the users × items matrix of a user's transition probabilities (each row of the binary matrix
divided by the user's item count) and P_iu the items × users one, both raised element-wise to α,

    W_ij = (P_iu P_ui)_ij / deg(j)^β

keeps the k largest entries of each row i (the item itself excluded) and, optionally, rescales each row
to sum to one. A user's scores are their binary history times W, so new users with a history are scored
without fold-in, and the model stores a sparse n_items × k matrix. β = 0 is P3α (plain random walk);
β > 0 lets less popular items through, which is where the walk beats plain item co-occurrence.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recforge.data.interactions import Interactions
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.item_item import SparseItemItem
from recforge.models.knn import prune_top_k

_BLOCK_BYTES = 256 << 20  # dense rows of W computed at a time


class RP3BetaConfig(ModelConfig):
    """Defaults chosen on a validation carve-out (per-user 10%, seed 1) of the ML-100K per-user 80/20 training
    part, over α 0.6-1.2, β 0-0.7, k 50-400, with and without row normalisation (docs/models.md)."""

    alpha: float = Field(0.6, gt=0, description="α: exponent on the transition probabilities")
    beta: float = Field(0.5, ge=0, description="β: the landing item's weight is divided by its degree^β")
    k: int = Field(400, ge=1, description="neighbours kept per item")
    normalize_rows: bool = Field(True, description="rescale each item's kept weights to sum to one")


def rp3beta_weights(matrix: sp.csr_matrix, alpha: float, beta: float, k: int, normalize_rows: bool) -> sp.csr_matrix:
    """Pruned item-item weights W (n_items × n_items, CSR, float32) for a users × items binary matrix."""
    binary = matrix.astype(np.float64).tocsr()
    binary.data[:] = 1.0
    n_items = binary.shape[1]
    user_degree = np.asarray(binary.sum(axis=1)).ravel()
    item_degree = np.asarray(binary.sum(axis=0)).ravel()
    user_to_item = sp.diags(1.0 / np.maximum(user_degree, 1.0)) @ binary  # P_ui
    item_to_user = (sp.diags(1.0 / np.maximum(item_degree, 1.0)) @ binary.T).tocsr()  # P_iu
    if alpha != 1.0:
        user_to_item.data **= alpha
        item_to_user.data **= alpha
    landing = np.where(item_degree > 0, np.maximum(item_degree, 1.0) ** -beta, 0.0)
    user_to_item = (user_to_item @ sp.diags(landing)).tocsc()
    blocks = []
    rows_per_block = max(1, _BLOCK_BYTES // (8 * max(1, n_items)))
    for start in range(0, n_items, rows_per_block):
        stop = min(n_items, start + rows_per_block)
        dense = np.asarray((item_to_user[start:stop] @ user_to_item).todense())
        dense[np.arange(stop - start), np.arange(start, stop)] = 0.0  # a walk back to the item itself
        blocks.append(prune_top_k(dense, k))
    weights = sp.vstack(blocks, format="csr")
    if normalize_rows:
        sums = np.asarray(weights.sum(axis=1)).ravel()
        weights = (sp.diags(np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)) @ weights).tocsr()
    return weights.astype(np.float32)


class RP3Beta(SparseItemItem):
    name = "rp3beta"
    Config = RP3BetaConfig

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: RP3BetaConfig = self.config  # type: ignore[assignment]
        self.weights_ = rp3beta_weights(self.seen_, c.alpha, c.beta, c.k, c.normalize_rows)
