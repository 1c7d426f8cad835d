"""Sequence encoders: (batch, length) item ids -> (batch, length, d) causal states.

Item ids are shifted by one so that 0 is padding (sequences are left-padded). Every encoder is causal:
the state at position t depends on items 0..t only, so training on every position of a window is the
same as training on every prefix ("sliding prefixes") at the cost of one pass.

- `SASRecEncoder`: learned positions, pre-norm Transformer blocks with a causal mask and a point-wise
  feed-forward layer as wide as the embedding (Kang & McAuley 2018). With `feature_bags`, an item's
  vector is its id's embedding plus the mean of its feature values' embeddings (brands and categories on
  the Amazon files), on the input and in the tied output layer alike: items seen a few times borrow
  from the others of their brand and category.
- `RecurrentEncoder`: stacked GRU/LSTM layers with dropout between them: GRU4Rec (one GRU), the
  beauty study's Model I (LSTM 256 -> LSTM 256), and Model II over text embeddings (GRU -> LSTM -> GRU).

A state depends on its own row's items only, never on how much padding the batch added: SASRec masks
padded keys (each position may always attend to itself, so a padded query never has an empty, NaN
softmax), and positions count back from the last item; the recurrent encoder packs each row to its true
length, so no recurrent step runs over padding. Scores are therefore the same for a user scored alone
or beside a long sequence (tested), and a reported metric does not depend on the batch size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SASRecEncoder(nn.Module):
    def __init__(
        self,
        n_items: int,
        dim: int,
        max_len: int,
        n_blocks: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
        feature_bags: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> None:
        """`feature_bags`: (values, offsets, n_values) as for `nn.EmbeddingBag`, one bag per item index."""
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.features: nn.EmbeddingBag | None = None
        if feature_bags is not None:
            values, offsets, n_values = feature_bags
            if len(offsets) != n_items:
                raise ValueError(f"feature_bags has {len(offsets)} bags for {n_items} items")
            self.features = nn.EmbeddingBag(n_values, dim, mode="mean")  # an empty bag adds zeros
            nn.init.normal_(self.features.weight, 0.0, dim**-0.5)
            self.register_buffer("feature_values", values.long())
            self.register_buffer("feature_offsets", offsets.long())
        self.position = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, n_heads, dim_feedforward=dim, dropout=dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.blocks = nn.TransformerEncoder(layer, n_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item.weight, 0.0, dim**-0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        length = sequence.shape[1]  # batches may be trimmed: positions count back from the last item
        positions = torch.arange(self.max_len - length, self.max_len, device=sequence.device)
        items = self.item(sequence) if self.features is None else nn.functional.embedding(sequence, self.item_table())
        x = items * math.sqrt(self.dim) + self.position(positions)[None]
        real = sequence > 0
        x = self.dropout(x) * real.unsqueeze(-1)
        return self.norm(self.blocks(x, mask=self._attention_mask(real)))

    def _attention_mask(self, real: torch.Tensor) -> torch.Tensor:
        """(batch · heads, L, L) additive mask: a query sees earlier real items and itself, nothing else."""
        length = real.shape[1]
        device = real.device
        future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        blocked = future[None] | ~real[:, None, :]
        blocked &= ~torch.eye(length, dtype=torch.bool, device=device)[None]
        mask = torch.zeros(blocked.shape, device=device).masked_fill(blocked, float("-inf"))
        heads = self.blocks.layers[0].self_attn.num_heads
        return mask.repeat_interleave(heads, dim=0)

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, dim) item vectors, row 0 the padding (zeros): id embeddings, plus the mean of the
        item's feature embeddings when there are features."""
        if self.features is None:
            return self.item.weight
        bags = self.features(self.feature_values, self.feature_offsets)
        return self.item.weight + nn.functional.pad(bags, (0, 0, 1, 0))

    def output_embeddings(self) -> torch.Tensor:
        """(n_items, dim) tied output embeddings (padding row dropped)."""
        return self.item_table()[1:]


class RecurrentEncoder(nn.Module):
    """Embedding (learned, or frozen vectors given as `frozen_inputs`) -> stacked recurrent layers."""

    def __init__(
        self,
        n_items: int,
        embedding_dim: int,
        layers: list[tuple[str, int]],
        dropout: float = 0.0,
        frozen_inputs: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if frozen_inputs is not None:
            padded = torch.cat([torch.zeros(1, frozen_inputs.shape[1]), frozen_inputs.float()])
            self.item = nn.Embedding.from_pretrained(padded, freeze=True, padding_idx=0)
            width = frozen_inputs.shape[1]
        else:
            self.item = nn.Embedding(n_items + 1, embedding_dim, padding_idx=0)
            width = embedding_dim
        self.recurrent = nn.ModuleList()
        for kind, hidden in layers:
            cell = {"gru": nn.GRU, "lstm": nn.LSTM}[kind]
            self.recurrent.append(cell(width, hidden, batch_first=True))
            width = hidden
        self.dropout = nn.Dropout(dropout)
        self.out_dim = width

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, out_dim) states, zero at padding. Each row runs over its own
        items only: rows move to the left edge, are packed to their lengths, and move back."""
        from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

        batch, length = sequence.shape
        lengths = (sequence > 0).sum(1)
        offset = (length - lengths)[:, None]
        columns = torch.arange(length, device=sequence.device)[None, :]
        to_left = (columns + offset) % length  # row b's items start at column 0, its padding follows
        packed = pack_padded_sequence(
            self.item(sequence.gather(1, to_left)),
            lengths.clamp(min=1).cpu(),  # an empty history runs one step on the zero padding vector
            batch_first=True,
            enforce_sorted=False,
        )
        for layer in self.recurrent:
            packed, _ = layer(packed)
            packed = PackedSequence(
                self.dropout(packed.data), packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
            )
        states, _ = pad_packed_sequence(packed, batch_first=True, total_length=length)
        back = ((columns - offset) % length)[..., None].expand(batch, length, states.shape[2])
        return states.gather(1, back) * (sequence > 0).unsqueeze(-1)
