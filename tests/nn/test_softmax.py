"""The blocked catalogue cross-entropy gives the plain expression's loss and gradients, whatever the block
size (blocks that divide the rows evenly or not, one row per block, one block for all)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.nn import softmax
from recforge.nn.softmax import catalogue_cross_entropy


def _plain(states, weight, bias, targets):
    return torch.nn.functional.cross_entropy(states @ weight.T + bias, targets)


def _loss_and_grads(loss_fn, states, weight, bias, targets):
    leaves = [t.clone().requires_grad_() for t in (states, weight, bias)]
    loss = loss_fn(*leaves, targets)
    loss.backward()
    return [loss.detach()] + [leaf.grad for leaf in leaves]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 70),
    items=st.integers(1, 90),
    dim=st.integers(1, 12),
    block_elements=st.sampled_from([1, 37, 256, 1 << 20]),
    seed=st.integers(0, 2**16),
)
def test_blocked_cross_entropy_matches_the_plain_expression(rows, items, dim, block_elements, seed):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(rows, dim, generator=generator) * 3
    weight = torch.randn(items, dim, generator=generator)
    bias = torch.randn(items, generator=generator)
    targets = torch.randint(0, items, (rows,), generator=generator)
    previous, softmax.BLOCK_ELEMENTS = softmax.BLOCK_ELEMENTS, block_elements
    try:
        blocked = _loss_and_grads(catalogue_cross_entropy, states, weight, bias, targets)
    finally:
        softmax.BLOCK_ELEMENTS = previous
    plain = _loss_and_grads(_plain, states, weight, bias, targets)
    for ours, reference in zip(blocked, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_a_target_repeated_across_blocks_accumulates_its_gradient():
    """Every row predicts item 0: the weight gradient of item 0 sums contributions from every block."""
    states = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    weight, bias = torch.randn(50, 8), torch.zeros(50)
    targets = torch.zeros(300, dtype=torch.long)
    blocked = _loss_and_grads(catalogue_cross_entropy, states, weight, bias, targets)
    plain = _loss_and_grads(_plain, states, weight, bias, targets)
    for ours, reference in zip(blocked, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_other_dtypes_take_the_plain_expression():
    states, weight = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    bias, targets = torch.zeros(7, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 6])
    loss = catalogue_cross_entropy(states, weight, bias, targets)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, _plain(states, weight, bias, targets))
