"""Every registered model runs the shared contract."""

from __future__ import annotations

from tests.models.conformance import ModelContract


class TestGlobalMean(ModelContract):
    model_name = "global_mean"


class TestBias(ModelContract):
    model_name = "bias"


class TestMostPopular(ModelContract):
    model_name = "most_popular"


class TestWeightedPopularity(ModelContract):
    model_name = "weighted_popularity"


class TestExplicitMF(ModelContract):
    model_name = "mf"
    params = {"n_epochs": 5, "n_factors": 8}


class TestAnimePaperMF(ModelContract):
    model_name = "mf"
    params = {"preset": "anime-paper", "n_epochs": 20, "blend_weight": 0.8, "blend_mean": "user"}


class TestExplicitALS(ModelContract):
    model_name = "als"
    params = {"n_factors": 8, "n_iterations": 3}


class TestBayesianMF(ModelContract):
    model_name = "bayesian_mf"
    params = {"n_factors": 4, "n_iterations": 12, "burn_in": 4, "n_kept": 4}


class TestImplicitALS(ModelContract):
    model_name = "ials"
    params = {"n_factors": 8, "n_iterations": 3}


class TestImplicitALSCholesky(ModelContract):
    model_name = "ials"
    params = {"n_factors": 8, "n_iterations": 3, "solver": "cholesky"}


class TestBPR(ModelContract):
    model_name = "bpr"
    params = {"n_factors": 8, "n_epochs": 3}


class TestEASE(ModelContract):
    model_name = "ease"


class TestItemKNN(ModelContract):
    model_name = "item_knn"
    params = {"k": 10}


class TestItemKNNImplicit(ModelContract):
    model_name = "item_knn"
    params = {"k": 10, "feedback": "implicit", "similarity": "cosine"}


class TestUserKNN(ModelContract):
    model_name = "user_knn"
    params = {"k": 10, "similarity": "pearson"}


class TestBlend(ModelContract):
    model_name = "blend"
    params = {
        "members": [{"model": "ease"}, {"model": "ials", "params": {"n_factors": 4, "n_iterations": 2}, "weight": 0.5}]
    }
