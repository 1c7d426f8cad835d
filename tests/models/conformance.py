"""Shared contract every recommender must satisfy. A model's test class inherits `ModelContract` and
declares only what is specific: the registry name, parameters, and whether it needs ratings."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from recforge import load
from recforge.data.splits import per_user_split
from recforge.errors import CapabilityError
from recforge.models import create_model
from recforge.models.base import HISTORY, KNOWN_USERS, RATINGS, History, TrainOptions
from tests.conftest import make_interactions


class ModelContract:
    model_name: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    deterministic: ClassVar[bool] = True

    @pytest.fixture(scope="class")
    @classmethod
    def split(cls):
        return per_user_split(make_interactions(n_users=40, n_items=60, n=1500, seed=3), 0.2, seed=0)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, split):
        return create_model(cls.model_name, **cls.params).fit(split.train, TrainOptions(seed=5))

    def test_config_roundtrips_through_toml(self):
        model = create_model(self.model_name, **self.params)
        again = type(model.config).from_toml(model.config.to_toml())
        assert again == model.config

    def test_unknown_parameter_is_refused(self):
        from recforge.errors import ConfigError

        with pytest.raises(ConfigError, match="no_such_parameter"):
            create_model(self.model_name, no_such_parameter=1)

    def test_scores_shape_and_values(self, fitted, split):
        users = np.arange(split.data.n_users)
        if KNOWN_USERS not in fitted.capabilities:  # a rating-only configuration refuses to rank, saying why
            with pytest.raises(CapabilityError, match=fitted.name):
                fitted.score(users)
            with pytest.raises(CapabilityError, match=fitted.name):
                fitted.recommend(split.data.users.ids[:3], k=5)
            assert fitted.fitted_on_ == split.train.fingerprint()
            return
        scores = fitted.score(users)
        assert scores.shape == (split.data.n_users, split.data.n_items) and scores.dtype == np.float32
        assert np.isfinite(scores).all()
        assert fitted.fitted_on_ == split.train.fingerprint()

    def test_recommend_excludes_seen_and_sorts(self, fitted, split):
        if KNOWN_USERS not in fitted.capabilities:
            pytest.skip("does not rank (checked in test_scores_shape_and_values)")
        users = split.data.users.ids[:10]
        recs = fitted.recommend(users, k=5)
        seen = split.train.to_csr("binary")
        for row, user in enumerate(fitted.users_.index(users)):
            listed = recs.item_index[row][recs.item_index[row] >= 0]
            assert not seen[user, listed].toarray().any()
            assert np.all(np.diff(recs.scores[row][: len(listed)]) <= 0)
        assert set(recs.to_frame().columns) >= {"user", "rank", "item", "score"}

    def test_deterministic_for_a_seed(self, fitted, split):
        if not self.deterministic:
            pytest.skip("model declares itself non-deterministic")
        again = create_model(self.model_name, **self.params).fit(split.train, TrainOptions(seed=5))
        users = np.arange(5)
        if KNOWN_USERS in fitted.capabilities:
            np.testing.assert_allclose(again.score(users), fitted.score(users), rtol=1e-5, atol=1e-6)
        if RATINGS in fitted.capabilities:
            np.testing.assert_allclose(again.predict(users, users), fitted.predict(users, users), rtol=1e-5, atol=1e-6)

    def test_save_load_roundtrip(self, fitted, tmp_path):
        path = fitted.save(tmp_path / "model")
        loaded = load(path)
        users = np.arange(min(8, fitted.n_users))
        if KNOWN_USERS in fitted.capabilities:
            np.testing.assert_allclose(loaded.score(users), fitted.score(users), rtol=1e-6, atol=1e-6)
        assert loaded.capabilities == fitted.capabilities
        assert loaded.config == fitted.config and loaded.fitted_on_ == fitted.fitted_on_
        if RATINGS in fitted.capabilities:
            np.testing.assert_allclose(loaded.predict(users, users), fitted.predict(users, users), rtol=1e-6)

    def test_history_scoring(self, fitted, split):
        if HISTORY not in fitted.capabilities:
            pytest.skip("model does not score query-time histories")
        users = np.arange(6)
        history = History.from_interactions(split.train, users)
        scores = fitted.score(users, history)
        assert scores.shape == (6, split.data.n_items) and np.isfinite(scores).all()
        recs = fitted.recommend(users, k=5, external_ids=False, history=history)
        assert (recs.served_by == "history").all()
        for row in range(6):
            listed = recs.item_index[row][recs.item_index[row] >= 0]
            assert not history.binary[row, listed].toarray().any()

    def test_predict_for_rating_models(self, fitted, split):
        if RATINGS not in fitted.capabilities:
            pytest.skip("not a rating model")
        test = split.test
        predictions = fitted.predict(test.user_index, test.item_index)
        assert predictions.shape == (len(test),) and np.isfinite(predictions).all()
