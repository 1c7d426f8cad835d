"""Sequential models: windows and padding by hand, causality of the encoders, and next-item quality on
MovieLens 100K leave-one-out (last item test, second-to-last validation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recforge.data.interactions import Interactions, Sequences
from recforge.data.query import History
from recforge.data.splits import leave_last_out
from recforge.evaluation.protocols import next_item_evaluator
from recforge.models import create_model
from recforge.models.config import TrainOptions
from recforge.models.sequential import SASRecConfig, epochs_for, last_items, training_windows, trim_padding
from recforge.nn.sequence import RecurrentEncoder, SASRecEncoder

pytestmark = pytest.mark.xdist_group("sequential")


def sequences(*users):
    items = np.concatenate([np.asarray(u, np.int64) for u in users])
    indptr = np.r_[0, np.cumsum([len(u) for u in users])]
    return Sequences(indptr=indptr, items=items, rows=np.arange(len(items)))


def test_training_windows_cut_from_the_end_and_left_pad():
    windows = training_windows(sequences([5, 6, 7, 8, 9, 10], [1], [2, 3]), max_len=3)
    # user 0: 6 items -> windows of 4 ending at the last item, then the rest (sharing one item); +1 shift
    expected = np.array([[8, 9, 10, 11], [0, 6, 7, 8], [0, 0, 3, 4]])
    np.testing.assert_array_equal(windows, expected)  # user 1 (one item) has nothing to learn


def test_last_items_and_trimming():
    seqs = sequences([5, 6, 7, 8], [1], [])
    block = last_items(seqs, np.array([0, 1, 2]), 3)
    np.testing.assert_array_equal(block, [[7, 8, 9], [0, 0, 2], [0, 0, 0]])
    np.testing.assert_array_equal(trim_padding(torch.tensor([[0, 0, 3], [0, 2, 4]])).numpy(), [[0, 3], [2, 4]])


def test_min_steps_raises_the_epochs_of_a_small_file_only():
    """A budget in optimizer steps: 1,100 steps of 256 windows are 13 epochs of Beauty's 22,512 windows (88
    batches; n_epochs 13 already gives them), 110 of a 2,398-window file; none is ever taken away."""
    config = SASRecConfig(n_epochs=13, batch_size=256, min_steps=1100)
    assert epochs_for(config, 22_512) == 13
    assert epochs_for(config, 2_398) == 110  # 10 batches an epoch
    assert epochs_for(config, 2_304) == 123  # 9 batches: ceil(1100 / 9)
    assert epochs_for(config, 100_000) == 13  # a larger file keeps its epochs (more steps)
    assert epochs_for(config.model_copy(update={"min_steps": None}), 10) == 13
    assert epochs_for(config, 1) == 1100  # one batch an epoch


def test_a_fit_with_min_steps_runs_the_raised_epochs():
    frame = pd.DataFrame(  # 40 users of 6 items: 40 windows, 3 batches of 16
        {"user_id": np.repeat(np.arange(40), 6), "item_id": [(u + t) % 7 for u in range(40) for t in range(6)]}
    )
    data = Interactions.from_frame(frame.assign(timestamp=np.tile(np.arange(6), 40)), timestamp="timestamp")
    model = create_model("sasrec", n_epochs=2, min_steps=12, batch_size=16, dim=8, lr_schedule="linear")
    model.fit(data, TrainOptions(seed=0, threads=1))
    assert len([entry for entry in model.training_log_ if "loss" in entry]) == 4  # ceil(12 / 3)


def _bags(n_items: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    lists = [[i % 4, 4 + i % 3] if i % 5 else [] for i in range(n_items)]
    values = torch.tensor([v for row in lists for v in row])
    offsets = torch.tensor(np.r_[0, np.cumsum([len(row) for row in lists])[:-1]])
    return values, offsets, 7


def test_an_items_vector_is_its_id_embedding_plus_the_mean_of_its_feature_embeddings():
    values, offsets = torch.tensor([0, 2, 1]), torch.tensor([0, 2, 2])  # item 0: {0, 2}; item 1: {}; item 2: {1}
    encoder = SASRecEncoder(3, 4, 5, dropout=0.0, feature_bags=(values, offsets, 3))
    table, ids, features = encoder.item_table(), encoder.item.weight, encoder.features.weight
    torch.testing.assert_close(table[0], torch.zeros(4))  # padding
    torch.testing.assert_close(table[1], ids[1] + (features[0] + features[2]) / 2)
    torch.testing.assert_close(table[2], ids[2])  # no features: the id alone
    torch.testing.assert_close(table[3], ids[3] + features[1])
    assert torch.equal(encoder.output_embeddings(), table[1:])  # the output layer is tied to the same vectors
    with pytest.raises(ValueError, match="2 bags for 3 items"):
        SASRecEncoder(3, 4, 5, feature_bags=(values, offsets[:2], 3))


def test_a_missing_item_feature_column_is_named(ml100k):
    from recforge.errors import ConfigError

    with pytest.raises(ConfigError, match="'brand' is not a column"):
        create_model("sasrec", item_features="brand", n_epochs=1).fit(ml100k)


@pytest.mark.parametrize(
    "encoder",
    [
        SASRecEncoder(30, 8, 6, dropout=0.0),
        SASRecEncoder(30, 8, 6, dropout=0.0, feature_bags=_bags(30)),
        RecurrentEncoder(30, 8, [("gru", 8), ("lstm", 8)]),
    ],
    ids=["sasrec", "sasrec-features", "recurrent"],
)
def test_encoders_are_causal(encoder):
    encoder.eval()
    sequence = torch.tensor([[0, 3, 4, 5, 6, 7]])
    changed = sequence.clone()
    changed[0, 4] = 20
    with torch.no_grad():
        a, b = encoder(sequence), encoder(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # states before the change are untouched
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize(
    "encoder",
    [SASRecEncoder(30, 8, 6, n_heads=2, dropout=0.0), RecurrentEncoder(30, 8, [("gru", 8), ("lstm", 8)])],
    ids=["sasrec", "recurrent"],
)
def test_encoder_states_ignore_the_padding_a_batch_adds(encoder):
    encoder.eval()
    alone = torch.tensor([[4, 5, 6]])
    padded = torch.tensor([[0, 0, 0, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    empty = torch.tensor([[0, 0, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        torch.testing.assert_close(encoder(padded)[0, 3:], encoder(alone)[0], rtol=1e-5, atol=1e-6)
        assert torch.isfinite(encoder(empty)).all()  # a history of padding only is scored, not NaN
        torch.testing.assert_close(encoder(empty)[0, -1], encoder(empty[:1, -2:])[0, -1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "lstm_next"])
def test_scores_do_not_depend_on_who_else_is_in_the_batch(name, loo):
    """A user scored alone, in a small batch and beside the heaviest users gets the same scores and list."""
    split, _, _ = loo
    model = create_model(name, n_epochs=1, dropout=0.1).fit(split.train, TrainOptions(seed=0, threads=1))
    lengths = model.sequences_.lengths
    light = np.argsort(lengths, kind="stable")[:4]  # 18 items, shorter than every max_len: padded
    heavy = np.argsort(-lengths)[:3]  # 500+ items: batches with them are padded to max_len
    alone = np.vstack([model.score(np.array([user])) for user in light])
    small = model.score(light)
    mixed = model.score(np.r_[heavy, light, heavy])[len(heavy) : len(heavy) + len(light)]
    for scores in (small, mixed):
        np.testing.assert_allclose(scores, alone, rtol=1e-4, atol=1e-4)
        assert np.array_equal(
            np.argsort(-scores, axis=1, kind="stable")[:, :10], np.argsort(-alone, axis=1, kind="stable")[:, :10]
        )
    history = History.from_interactions(split.train, light)  # the query-time path: the same as known users
    np.testing.assert_allclose(model.score(light, history), alone, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def loo(ml100k):
    split = leave_last_out(ml100k, k=1, valid_k=1)
    evaluator = next_item_evaluator(split, ks=(10,))
    popular = evaluator.evaluate(create_model("most_popular").fit(split.train)).summary["ndcg@10"]
    return split, evaluator, popular


@pytest.mark.slow
def test_sasrec_and_gru4rec_beat_popularity_on_ml100k(loo):
    split, evaluator, popular = loo
    runs = (
        ("sasrec", {"n_epochs": 8, "lr": 3e-3}),
        ("sasrec", {"n_epochs": 8, "lr": 3e-3, "item_features": "genres"}),  # id + genre embeddings
        ("gru4rec", {"n_epochs": 6}),
    )
    for name, params in runs:
        model = create_model(name, **params).fit(split.train, TrainOptions(seed=0, valid=split.valid))
        assert model.training_log_[-1]["loss"] < model.training_log_[0]["loss"]
        ndcg = evaluator.evaluate(model).summary["ndcg@10"]
        assert ndcg > popular * 1.15, (name, ndcg, popular)


@pytest.mark.slow
def test_model_ii_as_published_regresses_into_title_space_and_decodes_by_cosine(loo, ml100k):
    split, _, _ = loo
    params = {"n_epochs": 2, "hidden": 64, "objective": "mse"}
    model = create_model("text_regression", **params).fit(split.train, TrainOptions(seed=0))
    assert model.text_.shape == (ml100k.n_items, 384)
    scores = model.score(np.arange(3))
    assert scores.shape == (3, ml100k.n_items) and np.all(np.abs(scores) <= 1.0 + 1e-5)  # cosine similarities
    # the predicted vector points towards the next item (a random ranking puts it at percentile 0.50 ± 0.01
    # over 943 users; two short epochs reach 0.45), yet too weakly to rank (benchmarks/results/sequential.md)
    users = split.valid.user_index  # scored from their training sequence: the next item is the validation one
    scores = model.score(users)
    target = scores[np.arange(len(users)), split.valid.item_index]
    percentile = (scores > target[:, None]).mean(1)
    assert percentile.mean() < 0.47, percentile.mean()


@pytest.mark.slow
def test_model_ii_trained_contrastively_beats_popularity(loo):
    """The default objective (softmax over the catalogue's cosines plus an item bias) ranks: above
    popularity after four short epochs of a narrow network (0.052 vs 0.045 NDCG@10; the published MSE
    objective stays at ~0.008 however long it trains; the full preset, 15 epochs of width 312, reaches
    ~0.088: benchmarks/results/model2.md)."""
    split, evaluator, popular = loo
    params = {"n_epochs": 4, "hidden": 128, "lr": 3e-3}
    model = create_model("text_regression", **params).fit(split.train, TrainOptions(seed=0))
    ndcg = evaluator.evaluate(model).summary["ndcg@10"]
    assert ndcg > popular * 1.1, (ndcg, popular)
    # an item's score is its title's cosine with the prediction (through the learned map) plus its bias
    state = model.net_
    assert state.item_map.weight.shape == (384, 384) and state.bias.shape == (model.n_items,)
