"""AutoRec's numpy activations (used when scoring) match torch's (used in training), without overflow."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from recforge.models import create_model


@pytest.mark.parametrize("activation", ["sigmoid", "elu"])
def test_numpy_and_torch_activations_agree_at_extreme_pre_activations(activation):
    model = create_model("autorec", activation=activation)
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp/expm1 would raise here
        ours = model._activate(x)
    np.testing.assert_allclose(ours, model._activate(torch.from_numpy(x)).numpy(), rtol=1e-12, atol=0)
