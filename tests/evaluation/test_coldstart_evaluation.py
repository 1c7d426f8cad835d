"""Cold-start evaluation through `compare`: held-out users are asked with the histories the split gives
them, exactly as the library API asks them (regression: they were scored without them, so EASE fell
below popularity), and new users' ratings come from their fold-in or the cold-start rating."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.data.splits import user_disjoint_split
from recforge.evaluation.protocols import FullRankingEvaluator, RatingEvaluator
from recforge.experiment import run_experiment
from recforge.models import create_model
from recforge.models.config import TrainOptions

SPLIT = {"kind": "user_disjoint", "test_user_fraction": 0.2, "fold_in_fraction": 0.5}


@pytest.mark.slow
def test_compare_user_disjoint_uses_the_given_histories_and_equals_the_library(ml100k):
    config = {
        "name": "cold-users",
        "seed": 0,
        "dataset": {"name": "ml-100k"},
        "split": SPLIT,
        "evaluation": {"protocols": ["ranking", "rating"], "ks": [10]},
        "models": [{"model": "ease"}, {"model": "ials"}, {"model": "mf"}],
    }
    result = run_experiment(config)
    ranked = {run.label: run.results["ranking"] for run in result.runs if "ranking" in run.results}
    ndcg = {label: ranking.summary["ndcg@10"] for label, ranking in ranked.items()}
    for name in ("ease", "ials"):
        assert ndcg[name] > ndcg["most_popular"] + 0.03, ndcg
        assert set(ranked[name].recommended.served_by) == {"history"}

    split = user_disjoint_split(ml100k, test_user_fraction=0.2, fold_in_fraction=0.5, seed=0)
    ranking = FullRankingEvaluator(split.train, split.test, ks=(10,), history=split.fold_in)
    for name in ("ease", "ials"):
        library = ranking.evaluate(create_model(name).fit(split.train, TrainOptions(seed=0))).summary["ndcg@10"]
        assert ndcg[name] == pytest.approx(library, abs=1e-9)

    rmse = {run.label: run.results["rating"].summary["rmse"] for run in result.runs if "rating" in run.results}
    mf = create_model("mf").fit(split.train, TrainOptions(seed=0))
    library_rmse = RatingEvaluator(split.train, split.test, history=split.fold_in).evaluate(mf).summary["rmse"]
    assert rmse["mf"] == pytest.approx(library_rmse, abs=1e-9)
    assert rmse["mf"] < rmse["global_mean"] - 0.05, rmse  # folded in from their ratings, not a fresh vector


def test_new_user_ratings_blend_the_cold_start_prediction(ml100k):
    """The anime study's blend p·R̂ + (1 − p)·⟨R⟩ for a brand-new user: R̂ is the model's cold-start rating
    (the item's training mean without biases, μ + b_i with them), not X·Wᵀ of an empty user (0)."""
    split = user_disjoint_split(ml100k, test_user_fraction=0.1, fold_in_fraction=0.5, seed=0)
    new_user = int(np.unique(split.test.user_index)[0])
    items = np.arange(ml100k.n_items)
    for preset in ("anime-paper", "biased"):
        model = create_model("mf", preset=preset, n_epochs=3, blend_weight=0.8, blend_mean="global")
        model.fit(split.train, TrainOptions(seed=0))
        assert not model.known_users_[new_user]
        predicted = model.predict(np.full(len(items), new_user), items)
        cold = model._cold_raw(items)
        np.testing.assert_allclose(predicted, 0.8 * cold + 0.2 * model.blend_global_, rtol=1e-5)
        assert predicted.std() > 0.1  # items differ; not one constant 0.2·μ for everything
        assert 1.0 < np.median(predicted) < 5.0
        # the same user given an empty history is served the same cold-start rating
        empty = split.fold_in.subset(np.zeros(0, np.int64))
        np.testing.assert_allclose(model.predict(np.full(len(items), new_user), items, empty), predicted, rtol=1e-5)
