"""The shared shape of sparse item-item models (RP3β, SLIM): a user's scores are their binary history row
times a sparse n_items × n_items matrix W (`weights_`, float32 CSR), so a new user with a history is scored
without fold-in, similar items are read off W, and the artifact stores W's three CSR arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from recforge.coldstart import HISTORY, KNOWN_USERS
from recforge.data.query import History
from recforge.models.base import Recommender, csr_arrays, stored_csr


class SparseItemItem(Recommender):
    """Base class: subclasses set `weights_` in `_fit`."""

    capabilities = frozenset({KNOWN_USERS, HISTORY})
    weights_: sp.csr_matrix

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._times_weights(self.seen_[users])

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._times_weights(history.binary)

    def _score_leaving_out(self, history: History, left_out: np.ndarray, without: Callable[[], History]) -> np.ndarray:
        """Linear in the binary history: x·W − W[j] for each left-out j."""
        return self._score_history(history, np.array([-1])) - self.weights_[left_out].toarray()

    def _times_weights(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows.astype(np.float32, copy=False) @ self.weights_).todense(), dtype=np.float32)

    def _item_similarity(self, items: np.ndarray) -> np.ndarray:
        """How much having i predicts j, symmetrised (W is not symmetric)."""
        return np.asarray((self.weights_[items] + self.weights_[:, items].T).todense(), dtype=np.float32)

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return csr_arrays("weights", self.weights_)

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.weights_ = stored_csr(arrays, "weights", (len(self.items_), len(self.items_)))
