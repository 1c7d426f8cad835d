"""The two-tower network: a user tower (ID, features and, with history pooling, a bag of the user's
items), an item tower (ID and features), and optional user and item biases."""

from __future__ import annotations

import torch

from recforge.nn.tasks import Embeddings
from recforge.nn.towers import Tower, TowerConfig


class TowerNetwork(torch.nn.Module):
    def __init__(
        self,
        user_tower: TowerConfig,
        item_tower: TowerConfig,
        n_users: int,
        n_items: int,
        meta: dict,
        biases: bool,
        history_dim: int = 0,
        history_norm: str = "sqrt",
    ) -> None:
        super().__init__()
        user_meta, item_meta = meta["user"], meta["item"]
        self.user = Tower(user_tower, n_users, user_meta["dense_dim"] + history_dim, user_meta["cardinalities"])
        self.item = Tower(item_tower, n_items, item_meta["dense_dim"], item_meta["cardinalities"])
        self.history = torch.nn.EmbeddingBag(n_items, history_dim, mode="sum") if history_dim else None
        if self.history is not None:
            torch.nn.init.normal_(self.history.weight, 0.0, history_dim**-0.5)
        self.user_bias = torch.nn.Parameter(torch.zeros(n_users + 1)) if biases else None
        self.item_bias = torch.nn.Parameter(torch.zeros(n_items + 1)) if biases else None
        self.history_norm = history_norm

    def users(
        self,
        ids: torch.Tensor,
        rows: torch.Tensor,
        features: dict[str, torch.Tensor],
        history: tuple[torch.Tensor, torch.Tensor],
        exclude: torch.Tensor | None = None,
        id_dropout: float = 0.0,
        history_dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """User tower on `ids` (unknown = n_users) with feature rows `rows` of `features` and, with history
        pooling, the bag of rows `rows` of `history` (a CSR pair; `exclude` drops each row's target item).
        Dropout of IDs and bag items applies when a `generator` is given (training)."""
        dense = features["dense"][rows]
        if self.history is not None:
            bag = self.bag_mean(history, rows, exclude, history_dropout if generator is not None else 0.0, generator)
            dense = torch.cat([dense, bag], dim=1)
        return self.user(
            self._dropped(ids, self.user.n_ids, id_dropout, generator), features["categorical"][rows], dense
        )

    def items(
        self,
        index: torch.Tensor,
        features: dict[str, torch.Tensor],
        id_dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        ids = self._dropped(index, self.item.n_ids, id_dropout, generator)
        return self.item(ids, features["categorical"][index], features["dense"][index])

    @staticmethod
    def _dropped(ids: torch.Tensor, unknown: int, rate: float, generator: torch.Generator | None) -> torch.Tensor:
        if not rate or generator is None:
            return ids
        replaced = torch.rand(len(ids), generator=generator).to(ids.device) < rate
        return torch.where(replaced, torch.full_like(ids, unknown), ids)

    def bag_mean(
        self,
        history: tuple[torch.Tensor, torch.Tensor],
        rows: torch.Tensor,
        exclude: torch.Tensor | None,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean (or sum / √n) of the history embeddings of each row's items; the excluded target and dropped
        items do not count (a row left empty gets the zero vector)."""
        assert self.history is not None
        indptr, indices = history
        device = indices.device
        starts, ends = indptr[rows], indptr[rows + 1]
        counts = ends - starts
        offsets = torch.cumsum(counts, 0) - counts
        positions = torch.repeat_interleave(starts - offsets, counts) + torch.arange(int(counts.sum()), device=device)
        items = indices[positions]
        keep = torch.ones(len(items), device=device)
        if exclude is not None:
            keep = keep * (items != torch.repeat_interleave(exclude, counts)).float()
        if dropout:
            keep = keep * (torch.rand(len(items), generator=generator).to(device) >= dropout).float()
        sums = self.history(items, offsets, per_sample_weights=keep)
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=device), counts)
        kept = torch.zeros(len(rows), device=device).index_add_(0, row_of, keep)
        if self.history_norm == "sqrt":
            kept = kept.sqrt()
        return sums / kept.clamp_min(1.0)[:, None]

    @torch.no_grad()
    def embed_all(
        self,
        user_features: dict[str, torch.Tensor],
        item_features: dict[str, torch.Tensor],
        history: tuple[torch.Tensor, torch.Tensor],
    ) -> Embeddings:
        """Evaluation-mode vectors of every known user and item, and the biases (zeros when there are none)."""
        self.eval()
        n_users, n_items = self.user.n_ids, self.item.n_ids
        device = history[1].device
        everyone = torch.arange(n_users, device=device)
        users = self.users(everyone, everyone, user_features, history)
        items = self.items(torch.arange(n_items, device=device), item_features)
        zeros_u, zeros_i = torch.zeros(n_users, device=device), torch.zeros(n_items, device=device)
        user_bias = self.user_bias[:n_users].detach() if self.user_bias is not None else zeros_u
        item_bias = self.item_bias[:n_items].detach() if self.item_bias is not None else zeros_i
        return Embeddings(users, items, user_bias, item_bias)
