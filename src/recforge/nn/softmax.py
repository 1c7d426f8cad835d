"""Full-softmax cross-entropy over a catalogue, for the output layer of next-item models.

`catalogue_cross_entropy(states, weight, bias, targets)` equals
`cross_entropy(states @ weight.T + bias, targets)` (mean over rows), but on a CPU it never holds the
(P, n_items) logits: it works through blocks of rows small enough to stay in cache, keeping only each
row's log-sum-exp, and the backward pass recomputes a block's logits to form its softmax. One more
matrix product per step, and far less memory traffic: on SASRec's Beauty shapes (1,800 positions, 64
dimensions, 12,101 items) forward and backward took ~145 ms against ~265 ms for the plain expression
(2 cores), and the output layer is ~85% of an epoch (py-spy). On other devices, and for dtypes other than
float32, it is the plain expression: GPUs have the memory bandwidth that the blocks save here.
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 20  # logits per block (4 MB of float32): ~86 rows of a 12k-item catalogue


def catalogue_cross_entropy(
    states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `targets` (P,) under the softmax of `states @ weight.T + bias` (P, n)."""
    if states.device.type != "cpu" or states.dtype != torch.float32 or weight.dtype != torch.float32:
        return torch.nn.functional.cross_entropy(torch.addmm(bias, states, weight.T), targets)
    rows = max(8, min(1024, BLOCK_ELEMENTS // max(1, weight.shape[0])))
    return _BlockedCrossEntropy.apply(states, weight, bias, targets, rows)


class _BlockedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states, weight, bias, targets, rows):  # type: ignore[no-untyped-def]
        log_norm = torch.empty(len(states), dtype=states.dtype)
        for start in range(0, len(states), rows):
            block = slice(start, start + rows)
            log_norm[block] = torch.logsumexp(torch.addmm(bias, states[block], weight.T), dim=1)
        target_logits = (states * weight[targets]).sum(1) + bias[targets]
        ctx.save_for_backward(states, weight, bias, targets, log_norm)
        ctx.rows = rows
        return (log_norm - target_logits).mean()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        states, weight, bias, targets, log_norm = ctx.saved_tensors
        scale = grad / len(states)
        grad_states = torch.empty_like(states)
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias)
        for start in range(0, len(states), ctx.rows):
            block = slice(start, start + ctx.rows)
            # softmax - one-hot(target), times the mean's scale: d loss / d logits of the block
            delta = torch.addmm(bias, states[block], weight.T).sub_(log_norm[block, None]).exp_()
            delta[torch.arange(len(delta)), targets[block]] -= 1.0
            delta.mul_(scale)
            grad_states[block] = delta @ weight
            grad_weight.addmm_(delta.T, states[block])
            grad_bias += delta.sum(0)
        return grad_states, grad_weight, grad_bias, None, None
