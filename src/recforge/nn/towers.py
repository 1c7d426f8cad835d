"""Towers: a tower embeds one side (users or items) from whatever describes it.

Input = concat(ID embedding, categorical embeddings, dense features) where dense features are the
multi-hot genres, range-scaled numerics, taste profile and optional text embeddings built by
`recforge.data.features`. The MLP applies Linear -> activation -> dropout per hidden layer, then a
linear output layer (omitted when the tower is ID-only with no hidden layers: the embedding is the output).

IDs index an embedding table with one extra row at the end, kept at zero: the "unknown" id. Cold users
or items (features only) use it, and `id_dropout` trains the tower to work without the ID too.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class TowerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id_dim: int = Field(32, ge=0, description="ID embedding size; 0 = no ID embedding (features only)")
    categorical_dim: int = Field(8, ge=1, description="embedding size of each categorical feature")
    hidden: tuple[int, ...] = Field((128,), description="hidden layer widths")
    output_dim: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Literal["relu", "gelu"] = "relu"
    init_std: float | None = Field(None, description="N(0, std²) initialisation of every weight; None = torch default")
    normalize: bool = Field(False, description="L2-normalise the output")
    output_activation: Literal["none", "tanh"] = "none"


class Tower(nn.Module):
    """(ids (b,), categorical (b, c) int64, dense (b, d) float32) -> (b, output_dim)."""

    def __init__(self, config: TowerConfig, n_ids: int, dense_dim: int, cardinalities: list[int]) -> None:
        super().__init__()
        self.config = config
        self.n_ids = n_ids
        self.id_embedding = nn.Embedding(n_ids + 1, config.id_dim, padding_idx=n_ids) if config.id_dim else None
        self.categorical = nn.ModuleList(nn.Embedding(c, config.categorical_dim) for c in cardinalities)
        width = config.id_dim + config.categorical_dim * len(cardinalities) + dense_dim
        if width == 0:
            raise ValueError("a tower needs an ID embedding or some features")
        layers: list[nn.Module] = []
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU() if config.activation == "relu" else nn.GELU()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        id_only = self.id_embedding is not None and not config.hidden and not cardinalities and dense_dim == 0
        if not (id_only and config.output_dim == config.id_dim):
            layers.append(nn.Linear(width, config.output_dim))
        self.mlp = nn.Sequential(*layers)
        if config.init_std is not None:
            self._normal_init(config.init_std)
        else:  # torch's N(0, 1) embedding init saturates a softmax over dot products; use unit-norm vectors
            for embedding in [self.id_embedding, *self.categorical]:
                if embedding is not None:
                    nn.init.normal_(embedding.weight, 0.0, embedding.embedding_dim**-0.5)
            if self.id_embedding is not None:
                with torch.no_grad():
                    self.id_embedding.weight[self.n_ids].zero_()

    def _normal_init(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.id_embedding is not None:
            with torch.no_grad():
                self.id_embedding.weight[self.n_ids].zero_()

    def forward(self, ids: torch.Tensor, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.id_embedding is not None:
            parts.append(self.id_embedding(ids))
        parts += [embedding(categorical[:, j]) for j, embedding in enumerate(self.categorical)]
        if dense.shape[1]:
            parts.append(dense)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        x = self.mlp(x)
        if self.config.output_activation == "tanh":
            x = torch.tanh(x)
        return nn.functional.normalize(x, dim=1) if self.config.normalize else x
