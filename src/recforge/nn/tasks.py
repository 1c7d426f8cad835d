"""Tasks own a loss and its metrics (as in TF-Recommenders): the towers do not change when the task does.

- `RatingTask`: λ1·(inverse-frequency-weighted MSE) + λ2·(in-batch margin loss), the anime study's loss.
- `RetrievalTask`: softmax over in-batch items (optionally plus uniformly sampled items, or the whole
  catalogue), with log-Q correction for the popularity bias of in-batch sampling, accidental hits
  removed, and FactorizedTopK metrics.
- `BCETask`: binary cross-entropy against uniformly sampled negatives.

Metrics are computed from embeddings passed in; no task stores state that a saved model would need.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

TOPK = (1, 5, 10, 50, 100)


class RatingTask(nn.Module):
    """loss = λ1·Σ w(y)(ŷ − y)² / Σ w(y) + λ2·mean over in-batch pairs with y_i − y_j > m of max(0, m − (ŷ_i − ŷ_j)).

    w(y) is the inverse frequency of the target value y in the training set, normalised to mean 1 over
    training rows, so rare ratings (1s and 2s) weigh as much in total as common ones.
    """

    def __init__(
        self,
        targets: np.ndarray,
        mse_weight: float = 1.0,
        margin_weight: float = 0.0,
        margin: float = 0.5,
        inverse_frequency: bool = True,
    ) -> None:
        super().__init__()
        self.mse_weight, self.margin_weight, self.margin = mse_weight, margin_weight, margin
        values, counts = np.unique(targets, return_counts=True)
        weights = len(targets) / (len(values) * counts) if inverse_frequency else np.ones(len(values))
        self.register_buffer("values", torch.tensor(values, dtype=torch.float32), persistent=False)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        position = torch.searchsorted(self.values, targets).clamp(max=len(self.values) - 1)
        exact = self.values[position] == targets
        return torch.where(exact, self.weights[position], torch.ones_like(targets))

    def loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weights = self.sample_weights(targets)
        loss = self.mse_weight * (weights * (predictions - targets) ** 2).sum() / weights.sum()
        if self.margin_weight:
            target_gap = targets[:, None] - targets[None, :]
            predicted_gap = predictions[:, None] - predictions[None, :]
            ordered = (target_gap > self.margin).float()  # a dense mask: boolean indexing is ~10x slower here
            pairs = ordered.sum()
            if pairs > 0:
                loss = loss + self.margin_weight * (torch.relu(self.margin - predicted_gap) * ordered).sum() / pairs
        return loss


class RetrievalTask(nn.Module):
    """Sampled softmax with log-Q correction.

    Candidates for each batch are the batch's positive items, plus `uniform` extra items drawn uniformly
    (mixed negative sampling), or every item when the caller passes the full catalogue. Each candidate's
    logit is reduced by log of its expected count among the candidates (log-Q), so popular items are not
    punished for appearing as negatives more often. A candidate equal to a row's positive item, other
    than the row's own positive, is masked (an "accidental hit").
    """

    def __init__(self, item_frequency: np.ndarray, temperature: float = 0.05, logq_correction: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.logq_correction = logq_correction
        probability = item_frequency / item_frequency.sum()
        self.register_buffer("probability", torch.tensor(probability, dtype=torch.float32), persistent=False)

    def loss(
        self,
        users: torch.Tensor,
        positives: torch.Tensor,
        positive_ids: torch.Tensor,
        extra: torch.Tensor | None = None,
        extra_ids: torch.Tensor | None = None,
        full_catalogue: bool = False,
        item_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """users, positives: (b, d); positive_ids: (b,). With `full_catalogue`, `extra` holds every item
        embedding (n_items, d) and the softmax is exact (no sampling, no correction needed). `item_bias`
        (n_items,), when given, is added to every candidate's logit."""
        if full_catalogue:
            logits = users @ extra.T / self.temperature
            if item_bias is not None:
                logits = logits + item_bias
            return nn.functional.cross_entropy(logits, positive_ids)
        batch = len(positive_ids)
        candidates, candidate_ids = positives, positive_ids
        if extra is not None:
            candidates = torch.cat([positives, extra])
            candidate_ids = torch.cat([positive_ids, extra_ids])
        logits = users @ candidates.T / self.temperature
        if item_bias is not None:
            logits = logits + item_bias[candidate_ids]
        if self.logq_correction:
            n_uniform = 0 if extra_ids is None else len(extra_ids)
            expected = batch * self.probability[candidate_ids] + n_uniform / len(self.probability)
            logits = logits - torch.log(expected.clamp_min(1e-12))
        accidental = positive_ids[:, None] == candidate_ids[None, :]
        accidental[:, :batch] &= ~torch.eye(batch, dtype=torch.bool)
        logits = logits.masked_fill(accidental, float("-inf"))
        return nn.functional.cross_entropy(logits, torch.arange(batch))


class BCETask(nn.Module):
    """−log σ(⟨u, v⟩) − Σ_{v'} log(1 − σ(⟨u, v'⟩)) over each positive and its sampled negatives."""

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """users, positives: (b, d); negatives: (b, n, d)."""
        positive_logits = (users * positives).sum(1)
        negative_logits = torch.einsum("bd,bnd->bn", users, negatives)
        return nn.functional.softplus(-positive_logits).mean() + nn.functional.softplus(negative_logits).sum(1).mean()


def factorized_topk(
    user_embeddings: torch.Tensor,
    item_embeddings: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    ks: tuple[int, ...] = TOPK,
    batch: int = 1024,
) -> dict[str, float]:
    """Share of (user, target item) pairs whose target ranks in the user's top k over all items.

    `exclude` (optional, same length) marks per pair a boolean row of items to skip (e.g. training items).
    The target's rank is the number of items scoring strictly higher.
    """
    hits = {k: 0 for k in ks}
    for start in range(0, len(targets), batch):
        scores = user_embeddings[start : start + batch] @ item_embeddings.T
        target_scores = scores.gather(1, targets[start : start + batch, None])
        if exclude is not None:
            scores = scores.masked_fill(exclude[start : start + batch], float("-inf"))
        rank = (scores > target_scores).sum(1)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {f"top{k}_accuracy": hits[k] / max(1, len(targets)) for k in ks}
