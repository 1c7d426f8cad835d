"""I-AutoRec (Sedhain et al., 2015): an item-based autoencoder of explicit ratings.

Each item is the vector of its training ratings over all users (0 where unrated). The network
reconstructs it through one hidden layer, h(r) = W·σ(V·r + μ) + b, and learns from the observed
entries only: Σ_items ‖(r − h(r)) ⊙ observed‖² + (λ/2)(‖W‖² + ‖V‖²). The rating of user u for item i
is h(r_i)_u. A non-linear model of a different family from the factor and neighbourhood models, which
is what a stacked blend (`recforge.models.ensemble.Stack`) needs from a member. Items without training
ratings get the global mean.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.special import expit

from recforge._progress import progress_bar
from recforge.coldstart import KNOWN_USERS, RATINGS
from recforge.data.interactions import Interactions
from recforge.errors import ConfigError
from recforge.models.base import Recommender, csr_arrays, stored_csr
from recforge.models.config import ModelConfig, TrainOptions
from recforge.nn.training import seed_everything


class AutoRecConfig(ModelConfig):
    based: Literal["item", "user"] = Field(
        "item", description="I-AutoRec encodes each item's ratings (the paper's better variant); U-AutoRec each user's"
    )
    hidden: int = Field(500, ge=1, description="hidden units")
    activation: Literal["sigmoid", "elu"] = "sigmoid"
    # defaults picked on a 10% validation carve-out of ML-100K's random 80/20 training part (seed 1): λ 250
    # (1 over-fits, train RMSE 0.05 and validation 1.09; 1,000 under-fits), 100 epochs of batches of 256
    reg: float = Field(250.0, ge=0, description="λ of (λ/2)(‖W‖² + ‖V‖²), against the sum of squared errors")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate")
    n_epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1, description="vectors (items, or users) per step")


class AutoRec(Recommender):
    name = "autorec"
    Config = AutoRecConfig
    capabilities = frozenset({KNOWN_USERS, RATINGS})

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: AutoRecConfig = self.config  # type: ignore[assignment]
        ratings = train.explicit()
        if ratings.rating is None or len(ratings) == 0:
            raise ConfigError("autorec: needs explicit ratings")
        seed_everything(options.seed)
        device = torch.device(options.device)
        generator = torch.Generator().manual_seed(options.seed)
        matrix = ratings.to_csr("rating").astype(np.float32)
        # the encoded vectors: items × users (I-AutoRec) or users × items (U-AutoRec)
        self.item_ratings_ = matrix.T.tocsr() if c.based == "item" else matrix
        self.global_mean_ = float(ratings.rating.mean())
        width = self.item_ratings_.shape[1]
        encoder = torch.nn.Linear(width, c.hidden).to(device)
        decoder = torch.nn.Linear(c.hidden, width).to(device)
        optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=c.lr)
        rated_items = np.flatnonzero(np.diff(self.item_ratings_.indptr) > 0)
        with progress_bar("AutoRec", c.n_epochs, enabled=options.progress) as bar:
            for epoch in range(c.n_epochs):
                order = rated_items[torch.randperm(len(rated_items), generator=generator).numpy()]
                total = 0.0
                for start in range(0, len(order), c.batch_size):
                    batch = order[start : start + c.batch_size]
                    inputs = torch.from_numpy(self.item_ratings_[batch].toarray()).to(device)
                    observed = inputs != 0
                    outputs = decoder(self._activate(encoder(inputs)))
                    error = ((outputs - inputs) * observed).pow(2).sum()
                    # the penalty is spread over the steps of an epoch, as in the full-batch objective
                    penalty = 0.5 * c.reg * (encoder.weight.pow(2).sum() + decoder.weight.pow(2).sum())
                    loss = error + penalty * len(batch) / len(rated_items)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += float(error.detach())
                train_rmse = float(np.sqrt(total / max(1, self.item_ratings_.nnz)))
                self.training_log_.append({"epoch": epoch + 1, "train_rmse": train_rmse})
                bar.advance(train_rmse=train_rmse)
        self.encoder_weight_ = encoder.weight.detach().cpu().numpy()
        self.encoder_bias_ = encoder.bias.detach().cpu().numpy()
        self.decoder_weight_ = decoder.weight.detach().cpu().numpy()
        self.decoder_bias_ = decoder.bias.detach().cpu().numpy()

    def _activate(self, x: Any) -> Any:
        activation = self.config.activation  # type: ignore[attr-defined]
        if isinstance(x, np.ndarray):
            # expit and a clipped expm1 never overflow (pre-activations passed -709 on ML-1M-sized data)
            return expit(x) if activation == "sigmoid" else np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))
        return torch.sigmoid(x) if activation == "sigmoid" else torch.nn.functional.elu(x)

    def _hidden(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), hidden) codes of training rating vectors (items, or users for U-AutoRec)."""
        inputs = self.item_ratings_[rows]
        return self._activate(np.asarray(inputs @ self.encoder_weight_.T) + self.encoder_bias_)

    def _finish(self, predictions: np.ndarray, rows: np.ndarray) -> np.ndarray:
        unrated = np.diff(self.item_ratings_.indptr)[rows] == 0  # an item (or user) without training ratings
        predictions = np.where(unrated, self.global_mean_, predictions)
        low, high = self.rating_scale_ if self.rating_scale_ is not None else (-np.inf, np.inf)
        return np.clip(predictions, low, high).astype(np.float32)

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, outputs = (items, users) if self.config.based == "item" else (users, items)  # type: ignore[attr-defined]
        distinct, position = np.unique(rows, return_inverse=True)
        codes = self._hidden(distinct)[position]
        predictions = np.einsum("nh,nh->n", codes, self.decoder_weight_[outputs]) + self.decoder_bias_[outputs]
        return self._finish(predictions, rows)

    def _predict_cold(self, items: np.ndarray) -> np.ndarray:
        return np.full(len(items), self.global_mean_, dtype=np.float32)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        """Predicted ratings of every item for `users` (ranking by predicted rating)."""
        if self.config.based == "user":  # type: ignore[attr-defined]
            scores = self._hidden(users) @ self.decoder_weight_.T + self.decoder_bias_
            return self._finish(scores, np.repeat(users[:, None], self.n_items, axis=1))
        items = np.arange(self.n_items)
        scores = (self._hidden(items) @ self.decoder_weight_[users].T + self.decoder_bias_[users]).T
        return self._finish(scores, np.broadcast_to(items, scores.shape))

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {
            **csr_arrays("item_ratings", self.item_ratings_),
            "encoder_weight": self.encoder_weight_,
            "encoder_bias": self.encoder_bias_,
            "decoder_weight": self.decoder_weight_,
            "decoder_bias": self.decoder_bias_,
            "global_mean": np.array([self.global_mean_]),
        }

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        c: AutoRecConfig = self.config  # type: ignore[assignment]
        n_users, n_items = len(self.users_), len(self.items_)
        n_rows, width = (n_items, n_users) if c.based == "item" else (n_users, n_items)
        expected = {
            "encoder_weight": (c.hidden, width),
            "encoder_bias": (c.hidden,),
            "decoder_weight": (width, c.hidden),
            "decoder_bias": (width,),
        }
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ValueError(f"autorec: {name} has shape {arrays[name].shape}, the config needs {shape}")
        self.item_ratings_ = stored_csr(arrays, "item_ratings", (n_rows, width))
        self.encoder_weight_, self.encoder_bias_ = arrays["encoder_weight"], arrays["encoder_bias"]
        self.decoder_weight_, self.decoder_bias_ = arrays["decoder_weight"], arrays["decoder_bias"]
        self.global_mean_ = float(arrays["global_mean"].reshape(-1)[0])
