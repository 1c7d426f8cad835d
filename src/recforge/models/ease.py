"""EASE (Steck 2019) and its dropout-emphasised form EDLAE (Steck 2020): closed-form item-item models.

B = argmin ‖X − XB‖² + λ‖B‖² subject to diag(B) = 0, solved by P = (XᵀX + λI)⁻¹ and
B = I − P·diag(1/diag(P)) (then zero the diagonal). Scores for a user are their history row times B,
so new users with a history are scored without any fold-in. Memory is n_items² floats: fine up to a few
tens of thousands of items.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recforge.coldstart import HISTORY, KNOWN_USERS
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.models.base import Recommender
from recforge.models.config import ModelConfig, TrainOptions


class EASEConfig(ModelConfig):
    reg: float = Field(250.0, gt=0, description="λ on the item-item weights")
    dropout: float = Field(
        0.6,
        ge=0,
        lt=1,
        description="p of EDLAE's emphasised dropout: item i's penalty grows "
        "by p/(1-p)·|users of i| (Steck 2020); 0 = plain EASE",
    )
    dtype: str = Field("float64", pattern="^(float32|float64)$", description="precision of the inversion")


def ease_weights(matrix: sp.csr_matrix, reg: float, dropout: float = 0.0, dtype: str = "float64") -> np.ndarray:
    """Item-item weight matrix B (n_items, n_items) of EASE for a users x items interaction matrix.

    With `dropout` p > 0 this is EDLAE (Steck 2020, "Autoencoders that don't overfit towards the
    identity"): the diagonal penalty becomes λ + p/(1-p)·G_ii, which regularises popular items more.
    torch's Cholesky inverse is used for speed (imported here, so EASE scoring alone never loads it).
    """
    import torch

    gram_matrix = torch.from_numpy((matrix.T @ matrix).toarray()).to(getattr(torch, dtype))
    gram_matrix.diagonal().add_(reg + dropout / (1.0 - dropout) * gram_matrix.diagonal())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram_matrix))
    weights = -inverse / inverse.diagonal()[None, :]
    weights.diagonal().zero_()
    return weights.numpy()


class EASE(Recommender):
    name = "ease"
    Config = EASEConfig
    capabilities = frozenset({KNOWN_USERS, HISTORY})

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: EASEConfig = self.config  # type: ignore[assignment]
        self.weights_ = ease_weights(self.seen_, c.reg, c.dropout, c.dtype).astype(np.float32)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.seen_[users] @ self.weights_)

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return np.asarray(history.binary @ self.weights_)

    def _item_similarity(self, items: np.ndarray) -> np.ndarray:
        """Similar items by their learned weights: how much having i predicts j (symmetrised)."""
        return (self.weights_[items] + self.weights_[:, items].T).astype(np.float32)

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.weights_ = arrays["weights"]
