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
    params = {"n_factors": 8, "n_iterations": 5, "reg": 1.0}  # learns the fixture (percentile 0.23 vs 0.45)


class TestImplicitALSCholesky(ModelContract):
    model_name = "ials"
    params = {"n_factors": 8, "n_iterations": 5, "reg": 1.0, "solver": "cholesky"}


class TestBPR(ModelContract):
    model_name = "bpr"
    params = {"n_factors": 8, "n_epochs": 30}


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


class TestUserKNNImplicit(ModelContract):
    model_name = "user_knn"
    params = {"k": 10, "feedback": "implicit", "similarity": "cosine"}


class TestBlend(ModelContract):
    model_name = "blend"
    params = {
        "members": [{"model": "ease"}, {"model": "ials", "params": {"n_factors": 4, "n_iterations": 2}, "weight": 0.5}]
    }


class TestTwoTowerRetrieval(ModelContract):
    model_name = "two_tower"
    params = {
        "n_epochs": 10,
        "lr": 0.01,
        "batch_size": 8,
        "history_dim": 16,
        "user_tower": {"output_dim": 16},
        "item_tower": {"id_dim": 16, "output_dim": 16},
    }


class TestTwoTowerInBatchPairs(ModelContract):
    model_name = "two_tower"
    params = {
        "batching": "pairs",
        "softmax": "in_batch",
        "uniform_negatives": 8,
        "history_pooling": False,
        "batch_size": 128,
        "n_epochs": 2,
        "user_tower": {"id_dim": 8, "output_dim": 8},
        "item_tower": {"id_dim": 8, "output_dim": 8},
    }


class TestTwoTowerRating(ModelContract):
    model_name = "two_tower"
    params = {"preset": "rating", "n_epochs": 3, "margin_weight": 0.5, "inverse_frequency": True}


class TestTwoTowerIdOnly(ModelContract):
    model_name = "two_tower"
    params = {"preset": "id-only", "n_epochs": 3}


class TestTwoTowerBCE(ModelContract):
    model_name = "two_tower"
    params = {
        "task": "bce",
        "batching": "pairs",
        "history_pooling": False,
        "n_epochs": 2,
        "batch_size": 128,
        "user_tower": {"id_dim": 8, "output_dim": 8},
        "item_tower": {"id_dim": 8, "output_dim": 8},
    }


class TestSASRec(ModelContract):
    model_name = "sasrec"
    params = {"n_epochs": 2, "dim": 16, "max_len": 10}


class TestSASRecBCE(ModelContract):
    model_name = "sasrec"
    params = {"n_epochs": 2, "dim": 16, "max_len": 10, "loss": "bce"}


class TestGRU4Rec(ModelContract):
    model_name = "gru4rec"
    params = {"n_epochs": 2, "dim": 16, "hidden": 16, "max_len": 10}


class TestLSTMNext(ModelContract):
    model_name = "lstm_next"
    params = {"n_epochs": 2, "dim": 16, "hidden": 16, "max_len": 10}
