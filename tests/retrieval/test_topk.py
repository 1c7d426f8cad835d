"""The top-k kernel every model and evaluator uses: equal to a full stable sort (score descending, then
item index ascending), including ties at the k-th place and excluded (-inf) items."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recforge.retrieval.topk import topk


def reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isneginf(values), -1, order), values


# few distinct values, so ties (also across the k-th place) and whole rows of -inf are common
score_values = st.sampled_from([-np.inf, 0.0, 0.5, 1.0, 2.0, 3.0])


@settings(max_examples=300, deadline=None)
@given(
    scores=st.integers(1, 6).flatmap(
        lambda rows: st.integers(1, 40).flatmap(lambda cols: arrays(np.float32, (rows, cols), elements=score_values))
    ),
    k=st.integers(1, 45),
)
def test_topk_equals_a_full_stable_sort(scores, k):
    indices, values = topk(scores.copy(), k)
    expected_indices, expected_values = reference(scores, k)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(indices, expected_indices)


def test_a_tie_at_the_kth_place_goes_to_the_lower_index_among_a_million_items():
    rng = np.random.default_rng(0)
    scores = rng.random((3, 1_000_000), dtype=np.float32)
    scores[:, [999_999, 500_000, 7]] = 2.0  # three-way tie for the top
    scores[1, 123_456] = 3.0
    indices, values = topk(scores, 2)
    assert indices[0].tolist() == [7, 500_000] and indices[1].tolist() == [123_456, 7]
    assert values[1].tolist() == [3.0, 2.0]


def test_rows_with_fewer_candidates_than_k_are_padded():
    scores = np.array([[1.0, -np.inf, 0.5, -np.inf]], dtype=np.float32)
    indices, values = topk(scores, 3)
    assert indices.tolist() == [[0, 2, -1]] and np.isneginf(values[0, 2])
