"""Shared contract every recommender must satisfy. A model's test class inherits `ModelContract` and
declares only what is specific: the registry name, parameters, and whether it needs ratings."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from recforge import load
from recforge.coldstart import ANONYMOUS, HISTORY, KNOWN_USERS, RATINGS
from recforge.data.query import History, Query
from recforge.data.splits import per_user_split
from recforge.errors import CapabilityError, UnknownIdError
from recforge.evaluation.protocols import FullRankingEvaluator, RatingEvaluator
from recforge.models import create_model
from recforge.models.config import TrainOptions
from recforge.models.factorization import FactorModel
from tests.conftest import make_interactions


class ModelContract:
    model_name: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    deterministic: ClassVar[bool] = True
    # how much worse (mean rank percentile of held-out items) folding in a user's own history may be
    # than their trained state; 0.05 = five percentiles
    fold_in_tolerance: ClassVar[float] = 0.05
    # the model's quality band on MovieLens 100K with `quality_params` (default: its defaults): ("rmse", low,
    # high) on the random 80/20 split or ("ndcg@10", low, high) on the per-user 80/20 split (seed 0, full
    # ranking); a value above the band is as suspicious as one below (leakage)
    quality: ClassVar[tuple[str, float, float] | None] = None
    quality_params: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(scope="class")
    @classmethod
    def split(cls):
        return per_user_split(make_interactions(n_users=40, n_items=60, n=1000, seed=3, preference=True), 0.2, seed=0)

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
        one = fitted.recommend(users[3], k=5)  # one id alone is one user
        np.testing.assert_array_equal(one.item_index, recs.item_index[3:4])
        assert one.to_frame()["user"].tolist() == [users[3]] * 5

    def test_candidates_and_excluded_items_restrict_the_list_to_the_rest_in_score_order(self, fitted, split):
        """Business rules: only `candidates`, never `exclude_items`; what is left keeps the score order,
        and a list with fewer eligible items than k is padded rather than filled with others."""
        if KNOWN_USERS not in fitted.capabilities:
            pytest.skip("does not rank (checked in test_scores_shape_and_values)")
        users = split.data.users.ids[:6]
        ids = fitted.items_.ids
        candidates, excluded = ids[::3], ids[3:12:3]  # every third item, three of them also excluded
        recs = fitted.recommend(users, k=30, candidates=candidates, exclude_items=excluded)
        scores = fitted.score(fitted.users_.index(users))
        seen = split.train.to_csr("binary")
        allowed = np.isin(ids, candidates) & ~np.isin(ids, excluded)
        for row, user in enumerate(fitted.users_.index(users)):
            eligible = np.flatnonzero(allowed & (seen[user].toarray().ravel() == 0))
            listed = recs.item_index[row][recs.item_index[row] >= 0]
            assert len(listed) == min(30, len(eligible)) and set(listed) <= set(eligible)
            assert (f"only {len(listed)} item(s) to list" in recs.notes[row]) == (len(listed) < 30)
            expected = eligible[np.lexsort((eligible, -scores[row, eligible]))][: len(listed)]
            np.testing.assert_array_equal(listed, expected)
        with pytest.raises(UnknownIdError):
            fitted.recommend(users, k=5, candidates=[ids[0], "no such item"])

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

    def test_a_user_started_from_writes_scores_as_their_history_does(self, fitted, split):
        """`start_user` (the service's new users): two writes in turn give the scores the whole history
        gives as a query-time history, and the user's items are what their lists exclude."""
        if HISTORY not in fitted.capabilities:
            with pytest.raises(CapabilityError):
                fitted.start_user(History.from_items([[0]], fitted.n_items))
            return
        items = History.from_interactions(split.train, np.array([0])).row_items(0)[:6].tolist()
        first = fitted.start_user(History.from_items([items[:3]], fitted.n_items))
        state = fitted.start_user(History.from_items([items[3:]], fitted.n_items), first)
        assert state.user == -1 and sorted(state.items.tolist()) == sorted(items)
        whole = Query.from_history(History.from_items([items], fitted.n_items))
        np.testing.assert_allclose(fitted.score_updated(state), fitted.score(whole), rtol=1e-4, atol=1e-4)

    def test_explanations_are_the_score_each_history_item_adds(self, fitted, split):
        """`explain`: each reason's weight is what the recommended item's score loses when that one item
        leaves the history, the largest first, and only items that add score are given."""
        from recforge.models.explain import explain_history

        history = History.from_interactions(split.train, np.array([0]))
        if HISTORY not in fitted.capabilities:
            with pytest.raises(CapabilityError, match="trained state only"):
                explain_history(fitted, history, np.array([0]))
            return
        items = fitted.recommend(Query.from_history(history), k=3, external_ids=False).item_index[0]
        items = np.append(items, history.row_items(0)[0])  # and an item of the history itself
        sequence, ratings = history.row_items(0), history.row_ratings(0)
        full = fitted.score(Query.from_history(history))[0]
        for item, reasons in zip(items, explain_history(fitted, history, items, top=2), strict=True):
            assert len(reasons) <= 2 and all(r.item != item and r.weight > 0 for r in reasons)
            assert [r.weight for r in reasons] == sorted((r.weight for r in reasons), reverse=True)
            for reason in reasons:
                keep = sequence != reason.item
                kept = None if history.ratings is None else [[r for r, k in zip(ratings, keep, strict=True) if k]]
                without = History.from_items([sequence[keep].tolist()], fitted.n_items, kept)
                lost = full[item] - fitted.score(Query.from_history(without))[0, item]
                assert reason.weight == pytest.approx(lost, rel=1e-4, abs=1e-5)

    def test_scores_leaving_items_out_equal_scoring_each_shorter_history(self, fitted, split):
        """`_score_leaving_out`, what explanations measure with (linear models and iALS have exact cheaper
        rules, a blend combines its members'), equals scoring each history without one item."""
        if HISTORY not in fitted.capabilities:
            pytest.skip("scores users from their trained state only")
        history = History.from_interactions(split.train, np.array([0]))
        sequence, ratings = history.row_items(0), history.row_ratings(0)
        left_out = np.unique(sequence)[:6]
        keeps = [sequence != item for item in left_out]
        without = History.from_items(
            [sequence[keep].tolist() for keep in keeps],
            fitted.n_items,
            None
            if history.ratings is None
            else [[r for r, k in zip(ratings, keep, strict=True) if k] for keep in keeps],
        )
        expected = fitted._score_history(without, np.full(len(left_out), -1))
        measured = fitted._score_leaving_out(history, left_out, lambda: without)
        np.testing.assert_allclose(measured, expected, rtol=1e-4, atol=2e-5)

    def test_a_rating_models_training_history_carries_the_users_ratings(self, fitted, split, tmp_path):
        """A known user's training history (what explanations and history scoring read) holds their latest
        rating of each item for models that predict ratings from histories, also after save and load."""
        if not {RATINGS, HISTORY} <= fitted.capabilities:
            assert fitted.seen_ratings_ is None
            return
        loaded = load(fitted.save(tmp_path / "model"))
        for user in range(3):
            expected = History.from_interactions(split.train, np.array([user]))
            want = dict(zip(expected.row_items(0).tolist(), expected.row_ratings(0), strict=True))
            for model in (fitted, loaded):
                history = model.training_history(user)
                assert dict(zip(history.row_items(0).tolist(), history.row_ratings(0), strict=True)) == want

    def test_an_unrated_update_leaves_a_rating_models_scores_as_trained(self, fitted, split):
        """Interactions without ratings give an explicit factor model no evidence to move the user by, so
        the updated user scores as trained (blends and all)."""
        if not {RATINGS, KNOWN_USERS} <= fitted.capabilities or not isinstance(fitted, FactorModel):
            pytest.skip("not an explicit factor model")
        user = int(np.flatnonzero(fitted.known_users_)[0])
        unseen = int(np.flatnonzero(fitted.seen_[user].toarray().ravel() == 0)[0])
        update = fitted.update_user(user, History.from_items([[unseen]], fitted.n_items))
        np.testing.assert_allclose(fitted.score_updated(update), fitted.score(np.array([user])), rtol=1e-5, atol=1e-5)

    def test_predict_for_rating_models(self, fitted, split):
        if RATINGS not in fitted.capabilities:
            pytest.skip("not a rating model")
        test = split.test
        predictions = fitted.predict(test.user_index, test.item_index)
        assert predictions.shape == (len(test),) and np.isfinite(predictions).all()

    # -------------------------------------------------------------- behaviour through the router
    def test_unknown_users_are_refused(self, fitted, split):
        if not fitted.capabilities & {KNOWN_USERS, HISTORY, ANONYMOUS}:
            pytest.skip("does not rank")
        with pytest.raises(UnknownIdError):
            fitted.recommend(["no-such-user"], k=5)
        with pytest.raises(UnknownIdError):
            fitted.score(np.array([fitted.n_users + 3]))

    def test_an_empty_history_takes_the_declared_cold_start_path(self, fitted, split):
        if not fitted.capabilities & {KNOWN_USERS, HISTORY, ANONYMOUS}:
            pytest.skip("does not rank")
        query = Query.from_history(History.empty(2, fitted.n_items))
        recs = fitted.recommend(query, k=5)
        expected = "model" if ANONYMOUS in fitted.capabilities else "popularity"
        assert list(recs.served_by) == [expected, expected] and all(recs.notes)
        assert (recs.item_index >= 0).all() and np.isfinite(recs.scores).all()
        if expected == "popularity":  # the training interactions' most popular items
            counts = split.train.item_counts()
            assert counts[recs.item_index[0, 0]] == counts.max()

    def test_folding_in_a_users_own_history_ranks_like_their_trained_vector(self, fitted, split):
        """The history path must understand a known user: given their training interactions as a
        query-time history (as a new user), their held-out items rank about as well as from the trained
        state. Measured as the mean rank percentile of held-out items among unseen items."""
        if HISTORY not in fitted.capabilities or KNOWN_USERS not in fitted.capabilities:
            pytest.skip("needs both the trained and the history path")
        test = split.test
        users = np.unique(test.user_index)
        users = users[fitted.known_users_[users]]
        seen = split.train.to_csr("binary")[users]
        history = History.from_interactions(split.train, users)

        def percentile(scores: np.ndarray) -> float:
            scores = scores.astype(np.float64)
            scores[seen.nonzero()] = -np.inf
            ranks = (-scores).argsort(axis=1, kind="stable").argsort(axis=1, kind="stable")
            rows = np.searchsorted(users, test.user_index)
            keep = np.isin(test.user_index, users)
            keep[keep] &= np.asarray(seen[rows[keep], test.item_index[keep]]).ravel() == 0  # a repeat is not held out
            unseen = fitted.n_items - seen.getnnz(axis=1)[rows[keep]]
            return float(np.mean(ranks[rows[keep], test.item_index[keep]] / unseen))

        trained = percentile(fitted.score(users))
        folded = percentile(fitted.score(Query.from_history(history)))  # as strangers with that history
        assert folded <= trained + self.fold_in_tolerance, (trained, folded)

    @pytest.mark.slow
    def test_quality_band_on_movielens_100k(self, request):
        if self.quality is None:
            pytest.skip("no quality band declared for this configuration")
        metric, low, high = self.quality
        if metric == "rmse":
            split = request.getfixturevalue("ml100k_rating_split")
            evaluator = RatingEvaluator(split.train, split.test)
        else:
            split = request.getfixturevalue("ml100k_ranking_split")
            evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,))
        model = create_model(self.model_name, **self.quality_params).fit(split.train, TrainOptions(seed=0))
        value = evaluator.evaluate(model).summary[metric]
        assert low <= value <= high, (
            f"{self.model_name} {self.quality_params}: {metric} {value:.4f} not in [{low}, {high}]"
        )
