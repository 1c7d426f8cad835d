"""Ranked lists of any recommender scored by recforge's protocol (`recforge.evaluation.given`): a model's
own lists give exactly the numbers `FullRankingEvaluator` gives the model; lists are taken as given
(training items are misses where they stand, a missing list is empty); bad rows are named."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from recforge.cli import app
from recforge.data.interactions import Interactions
from recforge.data.splits import Split
from recforge.errors import DataFormatError
from recforge.evaluation.given import against_first, evaluate_lists, evaluate_predictions
from recforge.evaluation.protocols import FullRankingEvaluator
from recforge.models import create_model


def _lists(model, users, k: int) -> pd.DataFrame:
    return model.recommend(list(users), k=k).to_frame()[["user", "rank", "item", "score"]]


@pytest.mark.parametrize("name", ["most_popular", "ease"])
def test_a_models_own_lists_score_what_the_model_scores(tmp_path, ml100k_ranking_split, name):
    split = ml100k_ranking_split
    model = create_model(name).fit(split.train)
    direct = FullRankingEvaluator(split.train, split.test, ks=(5, 10, 20)).evaluate(model)
    path = tmp_path / "lists.csv"
    _lists(model, split.data.users.ids, 100).to_csv(path, index=False)
    given = evaluate_lists(path, split, ks=(5, 10, 20))
    for metric in ("ndcg@10", "recall@20", "map@10", "precision@5", "mrr@10", "hit_rate@20", "novelty", "coverage"):
        assert given.ranking.summary[metric] == pytest.approx(direct.summary[metric], abs=1e-12), metric
    pd.testing.assert_frame_equal(given.ranking.per_user, direct.per_user)
    assert given.ranking.curves["ndcg"] == pytest.approx(direct.curves["ndcg"])
    assert (given.users_listed, given.test_users_without_list, given.listed_training_items) == (943, 0, 0)

    by_score = tmp_path / "by_score.csv"
    scored = pd.read_csv(path).drop(columns="rank")
    if name == "ease":  # rows in any order (popularity's tied scores are ordered by the file's rows instead)
        scored = scored.sample(frac=1.0, random_state=0)
    scored.to_csv(by_score, index=False)
    again = evaluate_lists(by_score, split, rank=None, score="score", ks=(5, 10, 20))
    assert again.ranking.summary["ndcg@10"] == pytest.approx(direct.summary["ndcg@10"], abs=1e-12)


def _tiny() -> Split:
    """Users a, b; items 1..5. Train: a has 1, b has 2. Test: a has 2 and 3, b has 4."""
    frame = pd.DataFrame({"user_id": ["a", "b", "a", "a", "b", "b"], "item_id": [1, 2, 2, 3, 4, 5]})
    data = Interactions.from_frame(frame)
    return Split.from_rows(data, train=np.array([0, 1, 5]), test=np.array([2, 3, 4]))


def test_training_items_are_misses_where_they_stand_and_a_missing_list_is_empty(tmp_path):
    split = _tiny()
    path = tmp_path / "lists.csv"
    pd.DataFrame({"user": ["a", "a", "a"], "item": [1, 3, 2], "rank": [1, 2, 3]}).to_csv(path, index=False)
    result = evaluate_lists(path, split, ks=(1, 3))
    per_user = result.ranking.per_user
    a, b = split.data.users.index(np.array(["a", "b"]))
    # a: [1 (trained: a miss), 3 (hit), 2 (hit)]; ideal DCG of two relevant items = 1 + 1/log2(3)
    dcg = 1 / np.log2(3) + 1 / np.log2(4)
    assert per_user.loc[a, "ndcg@3"] == pytest.approx(dcg / (1 + 1 / np.log2(3)))
    assert per_user.loc[a, "precision@1"] == 0 and per_user.loc[a, "recall@3"] == 1
    assert per_user.loc[a, "mrr@3"] == pytest.approx(0.5)
    assert per_user.loc[b].drop("n_relevant").eq(0).all()  # no list: every metric 0
    assert (result.listed_training_items, result.test_users_without_list, result.longest) == (1, 1, 3)
    notes = "; ".join(result.ranking.notes)
    assert "1 test user(s) have no list" in notes and "1 listed item(s) are in their user's training part" in notes


def test_an_empty_file_is_no_lists_at_all(tmp_path):
    path = tmp_path / "lists.csv"
    path.write_text("user,item,rank\n")
    result = evaluate_lists(path, _tiny(), ks=(3,))
    assert (result.users_listed, result.test_users_without_list, result.longest) == (0, 2, 0)
    assert result.ranking.summary["ndcg@3"] == 0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"user": ["a", "a"], "item": [3, 3], "rank": [1, 2]}, "line 3: item '3' is listed twice for user 'a'"),
        ({"user": ["a", "c"], "item": [3, 3], "rank": [1, 1]}, "line 3, column 'user': user 'c' is not in the split"),
        ({"user": ["a"], "item": [9], "rank": [1]}, "line 2, column 'item': item '9' is not in the split"),
        ({"user": ["a"], "item": ["x"], "rank": [1]}, "line 2: column 'item': 'x' is not an integer id"),
        ({"user": ["a", "a"], "item": [3, 2], "rank": [1, "first"]}, "line 3, column 'rank': 'first' is not a number"),
        ({"user": ["a"], "item": [3], "place": [1]}, r"missing column\(s\) \['rank'\]"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    path = tmp_path / "lists.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match=message):
        evaluate_lists(path, _tiny())


def test_lists_are_compared_pairwise_by_user(tmp_path, ml100k_ranking_split):
    split = ml100k_ranking_split
    evaluations = []
    for name in ("ease", "most_popular", "ease"):
        path = tmp_path / f"{name}{len(evaluations)}.csv"
        _lists(create_model(name).fit(split.train), split.data.users.ids, 10).to_csv(path, index=False)
        evaluations.append(evaluate_lists(path, split, ks=(10,)))
    table = against_first([evaluation.ranking.per_user["ndcg@10"] for evaluation in evaluations])
    assert table.loc[0, "difference"] < -0.2 and table.loc[0, "p"] < 1e-50 and table.loc[0, "users"] == 943
    assert table.loc[1, "difference"] == 0 and table.loc[1, "p"] == 1.0  # the same lists: nothing to test
    assert (table["p_holm"] >= table["p"]).all()


def test_the_command_line_loop_split_train_recommend_evaluate_compare(tmp_path, data_dir):
    """`recforge data split`, a model trained on the split's train file, its lists from `recommend --users
    all`, scored by `evaluate --lists --split` and as a `[[lists]]` row of `recforge compare`: the numbers
    compare reports for the same model fitted there."""
    config = tmp_path / "run.toml"
    config.write_text(
        'name = "loop"\nseed = 3\n[dataset]\nname = "ml-100k"\n[split]\nkind = "per_user"\ntest_fraction = 0.2\n'
        '[split.validation]\nkind = "per_user"\ntest_fraction = 0.1\n[evaluation]\nprotocols = ["ranking"]\n'
        'ks = [10]\n[[models]]\nmodel = "ease"\n'
    )
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    said = run("data", "split", config, "--output", tmp_path / "split", "--format", "csv", "--recbole")
    assert (tmp_path / "split" / "validation" / "split.json").is_file()
    said = " ".join(said.split())  # the console wraps long lines
    assert "RecBole's files of dataset recforge-ml-100k (train 71,981, valid 8," in said  # the carve-out's train
    assert (tmp_path / "split" / "recbole" / "recforge-ml-100k" / "recforge-ml-100k.test.inter").is_file()
    train = tmp_path / "train.toml"
    train.write_text(
        f'[dataset]\nname = "table"\npath = "{tmp_path / "split" / "train.csv"}"\n'
        'options = { user = "user_id", item = "item_id", rating = "rating", timestamp = "timestamp" }\n'
        '[model]\nmodel = "ease"\n'
    )
    run("train", train, "--output", tmp_path / "ease")
    run("recommend", "--model", tmp_path / "ease", "--users", "all", "--output", tmp_path / "recs.csv", "-k", "10")
    run("evaluate", "--lists", tmp_path / "recs.csv", "--split", tmp_path / "split", "--output", tmp_path / "ev.json")
    import json

    scored = json.loads((tmp_path / "ev.json").read_text())["lists"][str(tmp_path / "recs.csv")]
    assert 0.40 < scored["ndcg@10"] < 0.50

    # the same lists as a row of `recforge compare` beside the model fitted there: equal on every metric
    with config.open("a") as handle:
        handle.write(
            f'[[lists]]\nname = "ease, via files"\npath = "{tmp_path / "recs.csv"}"\nsplit = "{tmp_path / "split"}"\n'
        )
    run("compare", config, "--output", tmp_path / "report")
    compared = json.loads((tmp_path / "report" / "metrics.json").read_text())
    rows = {run["model"]: run["results"]["ranking"]["summary"] for run in compared["runs"]}
    assert set(rows) == {"most_popular", "ease", "ease, via files"}
    for metric in ("ndcg@10", "recall@10", "map@10", "coverage", "novelty"):
        assert rows["ease, via files"][metric] == pytest.approx(rows["ease"][metric], abs=1e-12), metric
        assert rows["ease, via files"][metric] == pytest.approx(scored[metric], abs=1e-12), metric
    report = (tmp_path / "report" / "report.md").read_text()
    assert "ease, via files" in report
    # the winner against every other row: EASE's own lists are no different from it (p = 1)
    section = report.split("## ranking — significance against the best model")[1].split("\n## ")[0]
    assert "against the best model **ease**" in section and "| ease, via files | 0.0000 | 943 |" in section, section

    # lists made for another split (another seed) are refused before any model is fitted
    config.write_text(config.read_text().replace("seed = 3", "seed = 4"))
    refused = runner.invoke(app, ["compare", str(config), "--output", str(tmp_path / "other")])
    assert refused.exit_code == 2 and "holds another split" in refused.output, refused.output
    assert not (tmp_path / "other").exists()

    refused = runner.invoke(app, ["evaluate", "--lists", str(tmp_path / "recs.csv"), "--model", str(tmp_path)])
    assert refused.exit_code == 2 and "without --model" in refused.output


def test_lists_rows_need_names_of_their_own_and_their_paths_follow_the_config(tmp_path):
    from recforge.errors import ConfigError
    from recforge.experiment import load_config

    base = 'name = "x"\n[dataset]\nname = "ml-100k"\n[split]\nkind = "per_user"\n[[models]]\nmodel = "ease"\n'
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "run.toml"
    config.write_text(base + '[[lists]]\nname = "theirs"\npath = "../recs.csv"\nsplit = "split"\n')
    entry = load_config(config).lists[0]
    assert (entry.path, entry.split) == (str(tmp_path / "recs.csv"), str(tmp_path / "configs" / "split"))
    assert entry.rank == "rank" and entry.score is None
    for clash in ("ease", "theirs"):
        config.write_text(
            base + '[[lists]]\nname = "theirs"\npath = "a.csv"\nsplit = "s"\n'
            f'[[lists]]\nname = "{clash}"\npath = "b.csv"\nsplit = "s"\nscore = "score"\n'
        )
        with pytest.raises(ConfigError, match=f"the name '{clash}' is already a row of this experiment"):
            load_config(config)


def test_a_models_own_predictions_score_what_the_model_scores_and_every_rated_pair_needs_one(tmp_path, ml100k):
    from recforge.data.splits import random_split
    from recforge.evaluation.protocols import RatingEvaluator

    split = random_split(ml100k, 0.2, seed=0)
    model = create_model("bias").fit(split.train)
    direct = RatingEvaluator(split.train, split.test).evaluate(model)
    test = split.test.to_frame()
    predicted = model.predict(split.test.user_index, split.test.item_index)
    frame = pd.DataFrame({"user_id": test["user_id"], "item_id": test["item_id"], "prediction": predicted})
    extra = split.train.to_frame().iloc[:1][["user_id", "item_id"]].assign(prediction=9.0)  # a training pair
    path = tmp_path / "predictions.csv"
    pd.concat([frame.sample(frac=1.0, random_state=0), extra]).to_csv(path, index=False)
    given = evaluate_predictions(path, split)
    for metric in ("rmse", "mae", "r2"):
        assert given.rating.summary[metric] == pytest.approx(direct.summary[metric], abs=1e-6), metric
    assert given.unused == 1 and "1 predictions are for pairs that are not rated test pairs" in given.rating.notes[-1]

    frame.iloc[1:].to_csv(path, index=False)  # the first test pair left out
    first = f"no prediction for user {test['user_id'].iloc[0]!r} and item {test['item_id'].iloc[0]!r} (1 of 20000"
    with pytest.raises(DataFormatError, match=re.escape(first)):
        evaluate_predictions(path, split)
    pd.concat([frame, frame.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match=r"line 20002: user .* are predicted twice"):
        evaluate_predictions(path, split)
    pd.concat([frame.iloc[:1].assign(prediction="high"), frame.iloc[1:]]).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="line 2, column 'prediction': 'high' is not a number"):
        evaluate_predictions(path, split)


def test_evaluate_predictions_on_the_command_line(tmp_path, ml100k):
    from recforge.data.split_files import write_split
    from recforge.data.splits import random_split

    split = random_split(ml100k, 0.2, seed=1)
    write_split(split, tmp_path / "split")
    model = create_model("bias").fit(split.train)
    test = split.test.to_frame()
    for name, shift in (("mine.csv", 0.0), ("worse.parquet", 0.3)):
        predicted = model.predict(split.test.user_index, split.test.item_index) + shift
        frame = test[["user_id", "item_id"]].assign(prediction=predicted)
        frame.to_parquet(tmp_path / name) if name.endswith("parquet") else frame.to_csv(tmp_path / name, index=False)
    result = CliRunner().invoke(
        app,
        ["evaluate", "--predictions", str(tmp_path / "mine.csv"), "--predictions", str(tmp_path / "worse.parquet"),
         "--split", str(tmp_path / "split"), "--output", str(tmp_path / "ev.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    scored = json.loads((tmp_path / "ev.json").read_text())
    mine, worse = (scored["predictions"][str(tmp_path / n)]["rmse"] for n in ("mine.csv", "worse.parquet"))
    assert 0.9 < mine < 0.96 and worse > mine + 0.02
    assert scored["against_first"][str(tmp_path / "worse.parquet")]["p_holm"] < 1e-10  # paired on per-user MSE
    mixed = CliRunner().invoke(
        app, ["evaluate", "--predictions", str(tmp_path / "mine.csv"), "--split", str(tmp_path / "split"), "-k", "5",
              "--rank-column", "rank"],
    )  # fmt: skip
    assert mixed.exit_code == 2 and "order --lists" in mixed.output


def test_recforge_predict_with_a_prior_completes_a_split_for_evaluate_predictions(tmp_path, ml100k):
    """A model trained on a split's train file does not know the items only the test part has: `predict
    --unknown prior` predicts them from what it knows (as Surprise does), so every rated test pair has a
    prediction and `evaluate --predictions` scores the file, close to the model fitted in memory."""
    import json

    from recforge.data.split_files import write_split
    from recforge.data.splits import random_split
    from recforge.evaluation.protocols import RatingEvaluator
    from recforge.evaluation.saved import prior_ratings

    split = random_split(ml100k, 0.2, seed=0)
    write_split(split, tmp_path / "split", file_format="csv")
    train = tmp_path / "train.toml"
    train.write_text(
        f'[dataset]\nname = "table"\npath = "{tmp_path / "split" / "train.csv"}"\n'
        'options = { user = "user_id", item = "item_id", rating = "rating", timestamp = "timestamp" }\n'
        '[model]\nmodel = "bias"\n'
    )
    runner = CliRunner()
    for args in (
        ["train", train, "--output", tmp_path / "bias"],
        ["predict", "--model", tmp_path / "bias", "--input", tmp_path / "split" / "test.csv", "--output",
         tmp_path / "p.csv", "--unknown", "prior"],
        ["evaluate", "--predictions", tmp_path / "p.csv", "--split", tmp_path / "split",
         "--output", tmp_path / "e.json"],
    ):  # fmt: skip
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "p.csv")
    trained_items = set(split.train.to_frame()["item_id"])
    assert predicted["prior"].sum() == (~predicted["item_id"].isin(trained_items)).sum() == 40
    rmse = json.loads((tmp_path / "e.json").read_text())["predictions"][str(tmp_path / "p.csv")]["rmse"]
    in_memory = RatingEvaluator(split.train, split.test).evaluate(create_model("bias").fit(split.train))
    assert rmse == pytest.approx(in_memory.summary["rmse"], abs=2e-3) and 0.93 < rmse < 0.95

    # the prior itself: an unknown user gets the item's cold-start rating, an unknown item the user's mean
    # predicted rating over the most rated items, weighted by their counts
    from recforge.models import load_model

    model = load_model(tmp_path / "bias")
    items = np.array([0, -1, -1])
    users = np.array([-1, 3, -1])
    prior = prior_ratings(model, users, items, top=50)
    counts = np.asarray(model.seen_.sum(axis=0)).ravel()
    top = np.argsort(-counts, kind="stable")[:50]
    weights = counts[top] / counts[top].sum()
    assert prior[0] == pytest.approx(model.predict(np.array([-1]), np.array([0]))[0])
    assert prior[1] == pytest.approx(model.predict(np.full(50, 3), top) @ weights, abs=1e-5)
    assert prior[2] == pytest.approx(model.predict(np.full(50, -1), top) @ weights, abs=1e-5)


def test_lists_rows_on_the_next_item_protocol(tmp_path):
    """A sequential comparison (leave-last-out, `next_item`): a [[lists]] row is scored there too, with the
    protocol's hit@1, and equals what `evaluate --lists` gives the same file."""
    from recforge.data.split_files import read_split
    from recforge.experiment import load_config, run_experiment
    from tests.conftest import make_interactions

    log = make_interactions(n_users=40, n_items=30, n=600, seed=2).to_frame()
    log.drop_duplicates(["user_id", "item_id"]).to_csv(tmp_path / "log.csv", index=False)
    config = tmp_path / "run.toml"
    config.write_text(
        'name = "seq"\n[dataset]\nname = "table"\npath = "log.csv"\n'
        'options = { user = "user_id", item = "item_id", timestamp = "timestamp" }\n'
        '[split]\nkind = "leave_last_out"\nvalid_k = 1\n[evaluation]\nprotocols = ["next_item"]\nks = [5]\n'
    )
    assert CliRunner().invoke(app, ["data", "split", str(config), "--output", str(tmp_path / "split")]).exit_code == 0
    split = read_split(tmp_path / "split")
    popular = create_model("most_popular").fit(split.train)
    _lists(popular, split.data.users.ids, 5).to_csv(tmp_path / "lists.csv", index=False)
    with config.open("a") as handle:
        handle.write('[[lists]]\nname = "popular, as files"\npath = "lists.csv"\nsplit = "split"\n')
    result = run_experiment(load_config(config))
    row = next(run for run in result.runs if run.label == "popular, as files")
    assert set(row.results) == {"next_item"} and "hit_rate@1" in row.results["next_item"].summary
    alone = evaluate_lists(tmp_path / "lists.csv", split, ks=(1, 5))
    assert row.results["next_item"].summary["ndcg@5"] == pytest.approx(alone.ranking.summary["ndcg@5"], abs=1e-12)


def test_an_empty_lists_row_and_a_folder_of_parquet_parts_are_read_as_recforge_writes_them(tmp_path):
    """`recommend --users` writes a user whose list is empty as one row without item and rank (they were
    refused as "not an integer id"), and `spark score` writes a folder of Parquet part files."""
    split = _tiny()
    path = tmp_path / "lists.csv"
    path.write_text("user,rank,item,score,served_by,note\na,1,3,0.9,model,\nb,,,,model,every item seen\n")
    result = evaluate_lists(path, split, ks=(3,))
    assert (result.users_listed, result.test_users_without_list) == (1, 1)
    folder = tmp_path / "scores"
    folder.mkdir()
    rows = pd.DataFrame({"user": ["a", "a", "b"], "rank": [1, 2, 1], "item": [3, 2, 4]})
    rows.iloc[:2].to_parquet(folder / "part-00000.parquet")
    rows.iloc[2:].to_parquet(folder / "part-00001.parquet")
    (folder / "_SUCCESS").write_text("")
    whole = evaluate_lists(folder, split, ks=(3,))
    assert whole.users_listed == 2 and whole.ranking.summary["recall@3"] == 1.0
    path.write_text("user,rank,item\na,,3\n")  # an item without its rank is not an empty list
    with pytest.raises(DataFormatError, match="line 2, column 'rank': '' is not a number"):
        evaluate_lists(path, split)
