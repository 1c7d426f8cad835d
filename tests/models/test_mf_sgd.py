"""Biased MF's compiled SGD step (CPU) against the torch step it replaces there (kept for other devices)."""

import numpy as np
import pytest

from recforge.models import create_model
from recforge.models import mf as mf_module
from recforge.models.config import TrainOptions
from tests.conftest import make_interactions


def _fit(data, monkeypatch, compiled: bool, **params):
    if not compiled:  # route the CPU step through the torch ops
        monkeypatch.setattr(mf_module._MFTrainer, "_compiled_sgd_step", mf_module._MFTrainer._sgd_step)
    model = create_model("mf", n_factors=8, **({"batch_size": 64} | params)).fit(data, TrainOptions(seed=3))
    monkeypatch.undo()
    return model


@pytest.mark.parametrize(
    "params",
    [
        {"n_epochs": 4},
        {"n_epochs": 4, "lr": 0.05, "batch_size": 900},  # rows seen often in a batch: step damping is on
        {"n_epochs": 2, "biased": False, "loss": "mean"},
    ],
)
def test_compiled_step_matches_the_torch_step(monkeypatch, params):
    data = make_interactions(n_users=12, n_items=30, n=900, seed=1)  # 75 ratings per user
    users, items, _ = data.rated_triples("test")
    damped = mf_module._needs_damping(users, items, params.get("batch_size", 64), params.get("lr", 0.01))
    assert damped == ("lr" in params)
    compiled, reference = (_fit(data, monkeypatch, flag, **params) for flag in (True, False))
    np.testing.assert_allclose(compiled.user_factors_, reference.user_factors_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(compiled.item_factors_, reference.item_factors_, rtol=1e-4, atol=1e-5)
    if params.get("biased", True):
        np.testing.assert_allclose(compiled.item_bias_, reference.item_bias_, rtol=1e-4, atol=1e-5)
    losses = [[row["loss"] for row in model.training_log_] for model in (compiled, reference)]
    np.testing.assert_allclose(*losses, rtol=1e-4)


def test_a_rating_model_on_ratings_without_a_scale_warns_once(caplog):
    """Nothing clips its predictions then, and the service's page offers no stars: said, not silent."""
    import dataclasses

    data = make_interactions(seed=7)
    unscaled = dataclasses.replace(data, rating_scale=None, name="log without a scale")
    with caplog.at_level("WARNING", logger="recforge.models.base"):
        create_model("mf", n_epochs=1).fit(unscaled)
        create_model("bias").fit(unscaled)
        create_model("mf", n_epochs=1).fit(data)
        create_model("ials", n_iterations=1).fit(unscaled)  # ranks only: no ratings to clip
    warned = [r.getMessage() for r in caplog.records if "no rating scale" in r.getMessage()]
    assert warned == [
        "log without a scale: its ratings have no rating scale, so predictions are not clipped to one and the "
        "service's page offers no stars; load it with rating_scale=[low, high]"
    ]
