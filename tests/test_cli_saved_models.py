"""`recforge evaluate`, `recforge predict` and batch `recforge recommend` on a saved model, end to end on
MovieLens 100K's u1 fold: the numbers equal the library's for the same model and files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from recforge.cli import app
from recforge.data.loaders import load_movielens_100k_fold
from recforge.data.query import Query
from recforge.evaluation.protocols import FullRankingEvaluator, RatingEvaluator
from recforge.evaluation.saved import evaluate_saved, recommend_file
from recforge.models import create_model, load_model
from recforge.models.config import TrainOptions


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data_dir):
    split = load_movielens_100k_fold("u1", data_dir / "ml-100k")
    model = create_model("mf", n_epochs=5).fit(split.train, TrainOptions(seed=0))
    folder = tmp_path_factory.mktemp("saved")
    model.save(folder / "mf", catalogue=split.train)  # titles and genres for `recommend` and `similar`
    ials = create_model("ials", n_factors=16, n_iterations=5).fit(split.train, TrainOptions(seed=0))
    ials.save(folder / "ials", catalogue=split.train)
    return split, load_model(folder / "mf"), folder


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_evaluate_a_headerless_test_file_equals_the_library(saved, data_dir, tmp_path):
    split, model, folder = saved
    out = tmp_path / "metrics.json"
    _run(
        "evaluate", "--model", str(folder / "mf"), "--test", str(data_dir / "ml-100k" / "u1.test"),
        "--sep", "\\t", "--columns", "user_id,item_id,rating,timestamp", "--rating-column", "rating",
        "-k", "10", "-k", "20", "--output", str(out),
    )  # fmt: skip
    numbers = json.loads(out.read_text())
    library = FullRankingEvaluator(split.train, split.test, ks=(10, 20)).evaluate(model).summary
    for name in ("ndcg@10", "recall@20", "map@10", "coverage"):
        assert numbers["ranking"][name] == pytest.approx(library[name], abs=1e-12)
    rmse = RatingEvaluator(split.train, split.test).evaluate(model).summary["rmse"]
    assert numbers["rating"]["rmse"] == pytest.approx(rmse, abs=1e-9)
    assert 0.9 < rmse < 1.05 and numbers["rows"] == 20_000 and numbers["dropped_unknown"] == 0


def test_unknown_ids_are_named_or_dropped_and_counted(saved, tmp_path):
    _, _, folder = saved
    test = tmp_path / "test.csv"
    pd.DataFrame({"user_id": [1, 2, 99999], "item_id": [50, 172, 50]}).to_csv(test, index=False)
    result = CliRunner().invoke(app, ["evaluate", "--model", str(folder / "mf"), "--test", str(test)])
    assert result.exit_code == 2 and "line 4" in result.output and "99999" in result.output, result.output
    output = _run("evaluate", "--model", str(folder / "mf"), "--test", str(test), "--unknown", "drop")
    assert "left out 1 of 3 rows" in output


def test_errors_in_a_test_file_name_its_own_line(saved, tmp_path):
    """The saved-model files are read by the loaders' strict reader: a headerless file's line is not off
    by the header it lacks, a blank line does not shift the count, and a semicolon file needs no --sep."""
    _, model, _ = saved
    from recforge.errors import DataFormatError

    headerless = tmp_path / "pairs.tsv"
    headerless.write_text("1\t50\n\n2\t172\n99999\t50\n")
    with pytest.raises(DataFormatError, match="unknown to the model") as info:
        evaluate_saved(model, headerless, names=["user_id", "item_id"])
    assert info.value.line == 4
    semicolons = tmp_path / "test.csv"
    semicolons.write_text("user_id;item_id;rating\n1;50;5\n\n2;172;x\n")
    with pytest.raises(DataFormatError, match="not a number") as info:
        evaluate_saved(model, semicolons, rating="rating")
    assert info.value.line == 4
    for bad, message in (("inf", "rating is not finite"), ("", r"rating is missing \(1 row\(s\)\)")):
        semicolons.write_text(f"user_id;item_id;rating\n1;50;5\n\n2;172;{bad}\n")  # inf made RMSE infinite
        with pytest.raises(DataFormatError, match=message) as info:
            evaluate_saved(model, semicolons, rating="rating")
        assert (info.value.line, info.value.column) == (4, "rating")
    short = tmp_path / "short.csv"
    short.write_text("user_id,item_id\n1,50\n2\n")
    with pytest.raises(DataFormatError, match="column 'item_id': '' is not an integer id") as info:
        evaluate_saved(model, short)
    assert info.value.line == 3


def test_unknown_items_can_count_as_misses_as_compare_counts_them(saved, data_dir, tmp_path):
    """`--unknown drop` leaves an unknown item out of its user's relevant set, so recall and NDCG rise above
    what the same split gives in compare; `--unknown miss` keeps it relevant and out of reach."""
    from recforge.evaluation.saved import evaluate_saved

    split, model, folder = saved
    test = tmp_path / "test.csv"
    held_out = pd.read_csv(data_dir / "ml-100k" / "u1.test", sep="\t", names=["user_id", "item_id", "r", "t"])
    held_out[["user_id", "item_id"]].to_csv(test, index=False)
    plain = evaluate_saved(model, test, ks=(20,)).ranking.per_user  # a user with hits and < 18 held-out items
    one = int(plain.index[(plain["n_relevant"] < 18) & (plain["ndcg@20"] > 0)][0])
    user = model.users_.ids[one]
    extra = pd.DataFrame({"user_id": [user, user, 99999], "item_id": [99998, 99999, 50]})  # 2 new items, 1 new user
    pd.concat([held_out[["user_id", "item_id"]], extra]).to_csv(test, index=False)
    dropped = evaluate_saved(model, test, ks=(20,), unknown="drop")
    missed = evaluate_saved(model, test, ks=(20,), unknown="miss")
    assert (dropped.dropped_unknown, missed.dropped_unknown, missed.missed_unknown) == (3, 1, 2)
    before, after = dropped.ranking.per_user, missed.ranking.per_user
    n = before.loc[one, "n_relevant"]
    assert after.loc[one, "n_relevant"] == n + 2
    assert after.loc[one, "recall@20"] == pytest.approx(before.loc[one, "recall@20"] * n / (n + 2))
    assert after.loc[one, "ndcg@20"] < before.loc[one, "ndcg@20"]  # the ideal list holds the two it could not offer
    pd.testing.assert_frame_equal(after.drop(index=one), before.drop(index=one))
    library = FullRankingEvaluator(split.train, split.test, ks=(20,)).evaluate(model).summary
    assert dropped.ranking.summary["coverage"] == pytest.approx(library["coverage"])
    result = CliRunner().invoke(app, ["evaluate", "--model", str(folder / "mf"), "--test", str(test)])
    assert result.exit_code == 2 and "--unknown miss" in result.output
    output = _run("evaluate", "--model", str(folder / "mf"), "--test", str(test), "--unknown", "miss")
    assert "left out 1 of 20,003 rows: unknown user" in output
    assert "2 rows name items the model does not know: counted as relevant items it could not recommend" in output


def test_predict_and_batch_recommend_write_files(saved, tmp_path):
    split, model, folder = saved
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"user_id": [1, 1, 7], "item_id": [50, 172, 1]}).to_csv(pairs, index=False)
    _run("predict", "--model", str(folder / "mf"), "--input", str(pairs), "--output", str(tmp_path / "p.parquet"))
    predicted = pd.read_parquet(tmp_path / "p.parquet")
    users, items = model.users_.index([1, 1, 7]), model.items_.index([50, 172, 1])
    np.testing.assert_allclose(predicted["prediction"], model.predict(users, items), rtol=1e-6)
    pairs.write_text("user_id,item_id\n1,50\n99999,1\n")  # a ranking model is refused first, not the file
    result = CliRunner().invoke(
        app, ["predict", "--model", str(folder / "ials"), "--input", str(pairs), "--output", "x.csv"]
    )
    assert result.exit_code == 2 and "ials does not predict ratings (it ranks items: use recommend)" in result.output

    _run("recommend", "--model", str(folder / "mf"), "--users", "all", "-k", "5", "--output", str(tmp_path / "r.csv"))
    recs = pd.read_csv(tmp_path / "r.csv")
    assert recs["user"].nunique() == int(model.known_users_.sum()) and (recs.groupby("user").size() == 5).all()
    train = split.train
    seen = set(zip(train.users.lookup(train.user_index), train.items.lookup(train.item_index), strict=True))
    assert not any((u, i) in seen for u, i in zip(recs["user"], recs["item"], strict=True))  # training excluded
    expected = model.recommend([1], k=5).to_frame()
    assert recs[recs["user"] == 1]["item"].tolist() == expected["item"].tolist()


def _table_rows(output: str) -> list[list[str]]:
    """The cells of a printed table's rows, a cell wrapped over several lines joined again."""
    rows: list[list[str]] = []
    for line in output.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells[0]:  # a rank: a new row
            rows.append(cells)
        else:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def _listed_items(output: str) -> list[int]:
    """The item column of a printed recommendations table."""
    return [int(row[1]) for row in _table_rows(output)]


def test_similar_finds_an_item_by_its_title_and_names_ambiguous_ones(saved):
    _, model, folder = saved
    by_id = _run("similar", "--model", str(folder / "mf"), "--item", "50", "-k", "5")
    by_title = _run("similar", "--model", str(folder / "mf"), "--item", "STAR WARS", "-k", "5")  # "Star Wars (1977)"
    assert by_title == by_id and "Star Wars (1977) [50]" in by_id
    expected = model.similar_items(np.array([50]), 5).to_frame()["item"].tolist()  # external ids in and out
    assert _listed_items(by_id) == expected
    typed = _run("similar", "--model", str(folder / "mf"), "--item", "The Usual Suspects", "-k", "5")
    assert "Usual Suspects, The (1995) [12]" in typed  # the article where people put it
    plain = _run("similar", "--model", str(folder / "mf"), "--item", "les miserables", "-k", "5")
    assert "Misérables, Les (1995) [" in plain  # accents and punctuation as people type them
    result = CliRunner().invoke(app, ["similar", "--model", str(folder / "mf"), "--item", "godfather"])
    assert result.exit_code == 2 and "matches 2 titles" in result.output, result.output
    assert "127 Godfather, The (1972)" in result.output and "187 Godfather: Part II" in result.output
    result = CliRunner().invoke(app, ["similar", "--model", str(folder / "mf"), "--item", "no such film"])
    assert result.exit_code == 2 and "neither an item id of this model nor part of a title" in result.output
    result = CliRunner().invoke(app, ["similar", "--model", str(folder / "mf"), "--item", "godfathr part 2"])
    assert result.exit_code == 2 and "closest titles: 187 Godfather: Part II, The (1974)" in result.output


def test_recommend_for_a_new_user_from_items_given_by_id_or_title(saved):
    split, model, folder = saved
    output = _run(
        "recommend", "--model", str(folder / "mf"), "--item", "toy story", "--item", "50", "--item", "Fargo (1996)",
        "--item", "1", "-k", "5",
    )  # fmt: skip
    title = "new user with Toy Story (1995) [1], Star Wars (1977) [50], Fargo (1996) [100] (served"  # Toy Story once
    assert title in " ".join(output.split())
    new_user = Query.from_items([[model.items_.position(i) for i in (1, 50, 100)]], model.n_items)
    expected = model.recommend(new_user, k=5, external_ids=False).item_index[0]
    assert _listed_items(output) == model.items_.ids[expected].tolist()
    ials = load_model(folder / "ials")
    explained = _run("recommend", "--model", str(folder / "ials"), "--user", "1", "-k", "3", "--explain")
    rows = _table_rows(explained)
    expected = ials.explain(1, [int(row[1]) for row in rows])
    titles = dict(zip(split.train.items.ids, split.train.item_features["title"], strict=True))
    for row in rows:  # the because column lists the library's reasons, by title, largest first
        reasons = expected[expected["item"] == int(row[1])]["because"]
        assert row[5] == "; ".join(titles[i] for i in reasons) and len(reasons) == 3
    result = CliRunner().invoke(app, ["recommend", "--model", str(folder / "mf"), "--item", "1", "--user", "1"])
    assert result.exit_code == 2 and "give --user ID, --item ID|TITLE" in result.output


def test_recommend_keeps_to_the_genres_asked_for(saved, tmp_path):
    split, _, folder = saved
    output = _run("recommend", "--model", str(folder / "ials"), "--user", "1", "-k", "5", "--genre", "western")
    westerns = split.train.items.ids[["Western" in g for g in split.train.item_features["genres"]]]
    expected = load_model(folder / "ials").recommend([1], k=5, candidates=westerns)
    assert _listed_items(output) == list(expected.items[0])
    batch = ["recommend", "--model", str(folder / "ials"), "--users", "all", "--output", str(tmp_path / "r.csv")]
    _run(*batch, "-k", "4", "--genre", "western")  # every user's list, from westerns only
    written = pd.read_csv(tmp_path / "r.csv")
    everyone = load_model(folder / "ials").recommend(written["user"].unique(), k=4, candidates=westerns)
    assert written["item"].tolist() == everyone.to_frame()["item"].tolist() and len(written) == 4 * 943
    assert written["note"].isna().all()  # full lists: nothing to say (an empty CSV field)
    _run(*batch, "-k", "4", "--genre", "unknown")  # u.item's "unknown" genre: two movies
    few = pd.read_csv(tmp_path / "r.csv")
    sizes = few.groupby("user")["item"].count()
    said = few["note"].str.extract(r"^only (\d) item")[0].astype(int).groupby(few["user"]).first()
    assert (sizes <= 2).all() and said.equals(sizes)  # each user's note gives their list's length
    assert few["user"].nunique() == 943 and few["user"].is_monotonic_increasing  # no user left out, in order
    ials = load_model(folder / "ials")
    star_wars = recommend_file(ials, "all", k=3, candidates=np.array([ials.items_.position(50)]))
    frame = split.train.to_frame()
    seen = set(frame.loc[frame["item_id"] == 50, "user_id"])
    empty = star_wars[star_wars["item"].isna()]  # those who rated it: one row each, no rank or score, a note
    assert set(empty["user"]) == seen and len(empty) == len(seen) and len(star_wars) == 943
    assert empty["rank"].isna().all() and empty["score"].isna().all() and star_wars["user"].is_monotonic_increasing
    assert empty["note"].str.startswith("only 0 item(s) to list: every other one is seen").all()
    star_wars.to_csv(tmp_path / "s.csv", index=False)
    assert ",50," in (tmp_path / "s.csv").read_text() and ",50.0," not in (tmp_path / "s.csv").read_text()
    pd.DataFrame({"user_id": [1, 2]}).to_csv(tmp_path / "users.csv", index=False)
    batch[batch.index("all")] = str(tmp_path / "users.csv")
    _run(*batch, "-k", "3", "--explain")
    written = pd.read_csv(tmp_path / "r.csv")
    ials = load_model(folder / "ials")
    first = written[written["user"] == 1]
    expected = ials.explain(1, first["item"].tolist())
    for item, because in zip(first["item"], first["because"], strict=True):
        assert because == ";".join(str(i) for i in expected[expected["item"] == item]["because"])


def test_a_users_file_saved_as_unicode_text_reads_like_a_csv(saved, tmp_path):
    """Excel's "Unicode Text" (UTF-16 with a byte-order mark, tab-separated) lists the same users."""
    _, model, _ = saved
    plain, excel = tmp_path / "users.csv", tmp_path / "users.txt"
    plain.write_text("user_id,segment\n1,a\n7,b\n")
    excel.write_bytes("user_id\tsegment\r\n1\ta\r\n7\tb\r\n".encode("utf-16"))
    expected = recommend_file(model, plain, k=3)
    assert expected["user"].tolist() == [1] * 3 + [7] * 3
    pd.testing.assert_frame_equal(recommend_file(model, excel, k=3), expected)


@settings(max_examples=60, deadline=None)
@given(
    n_columns=st.integers(1, 3),
    rows=st.lists(st.lists(st.integers(0, 10**6), min_size=3, max_size=3), min_size=1, max_size=8),
    sep=st.sampled_from([",", "\t", ";", "|"]),
)
def test_files_of_any_separator_and_width_read_back(tmp_path_factory, n_columns, rows, sep):
    """The separator is sniffed among , tab ; | — a one-column file (a list of users) included, which
    Python's unrestricted sniffer split at a letter of its header."""
    from recforge.evaluation.saved import read_table

    names = ["user_id", "item_id", "rating"][:n_columns]
    path = tmp_path_factory.mktemp("sniff") / "table.csv"
    path.write_text("\n".join([sep.join(names), *(sep.join(map(str, row[:n_columns])) for row in rows)]) + "\n")
    frame = read_table(path, names)
    assert frame.to_numpy().tolist() == [[str(v) for v in row[:n_columns]] for row in rows]


@pytest.mark.parametrize("width", [60, 100, 160])
def test_a_wide_metrics_table_is_split_to_fit_the_terminal_never_cut(monkeypatch, width):
    """The demo's 18 metric columns were cut to "recal…" and "0.29…" on a 160-column terminal."""
    import io
    import re

    from rich.console import Console

    import recforge.cli as cli

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(width=width, file=out))
    columns = [f"{m}@{k}" for k in (5, 10, 20) for m in ("ndcg", "recall", "precision", "map", "hit_rate")]
    frame = pd.DataFrame(
        np.arange(2 * len(columns)).reshape(2, -1) / 1000, columns=columns, index=pd.Index(["most_popular", "ease"])
    )
    cli.print_frame(frame, "ranking")
    text = out.getvalue()
    assert "…" not in text and all(len(line) <= width for line in text.splitlines())
    headers = re.findall(r"[a-z_]+@\d+", text)
    assert headers == columns  # every column once, in order
    assert text.count("most_popular") == len(re.findall(r"┏", text)) > (1 if width < 160 else 0)
    for value in frame.to_numpy().ravel():
        assert f"{value:.4f}" in text


def test_the_serving_announcement_hides_the_stores_password(monkeypatch):
    import io

    from rich.console import Console

    import recforge.cli as cli

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(width=80, file=out))
    monkeypatch.delenv("RECFORGE_TOKEN", raising=False)
    monkeypatch.delenv("RECFORGE_TOKEN_FILE", raising=False)
    store = "postgresql://recforge:hunter2@db.example:5432/recforge"
    cli._announce_serving(cli.Path("models/x"), "::1", 8000, 2, store, None)
    text = out.getvalue()
    assert "http://[::1]:8000" in text and "on 2 workers" in text and "hunter2" not in text
    assert "postgresql://recforge:***@db.example:5432/recforge" in text and "writes disabled" in text
    assert len(text.strip().splitlines()) == 1  # one line, however narrow the terminal


def test_spark_score_refuses_a_path_that_is_no_artifact_before_starting_spark(tmp_path, monkeypatch):
    """The error came after the JVM's start-up (5 s); now before it (no Spark session is asked for)."""
    monkeypatch.setattr("recforge.spark.prepare.spark_session", lambda *a, **k: pytest.fail("Spark started"))
    result = CliRunner().invoke(app, ["spark", "score", "--model", str(tmp_path / "no"), "--output", "out"])
    assert result.exit_code == 2 and "is not a model artifact directory" in result.output, result.output


def test_commands_refuse_an_output_that_is_not_theirs_before_doing_the_work(tmp_path, monkeypatch):
    """`train --output` into a folder of other files deleted them after the fit (and `compare` into a file
    failed only after every model ran); now the command stops at once and writes nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.toml").write_text('seed = 0\n[dataset]\nname = "ml-100k"\n[model]\nmodel = "ease"\n')
    project = tmp_path / "project"
    project.mkdir()
    (project / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["train", "train.toml", "--output", str(project)])
    assert result.exit_code == 2 and "is a folder of other files" in result.output, result.output
    assert [p.name for p in project.iterdir()] == ["keep.txt"]
    (tmp_path / "compare.toml").write_text(
        'name = "x"\nseed = 0\n[dataset]\nname = "ml-100k"\n[split]\nkind = "random"\n'
        '[evaluation]\nprotocols = ["ranking"]\n[[models]]\nmodel = "most_popular"\n'
    )
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["evaluate", "--model", "missing", "--test", "t.csv", "--output", "project"])
    assert result.exit_code == 2 and "project is a folder; the JSON output is a file" in result.output, result.output
    result = CliRunner().invoke(app, ["compare", "compare.toml", "--output", "keep.txt"])
    assert result.exit_code == 2 and "keep.txt is a file; the report is a folder" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.toml", "keep.txt", "project", "train.toml"]


def test_items_without_titles_are_listed_by_asin_and_found_by_it(tmp_path):
    """Amazon's sequence files have no titles, only an ASIN per item: lists show the ASIN as the title,
    `--item ASIN` finds the item, and the empty genres column is left out."""
    from recforge.data.loaders import load_amazon_sequences

    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, [u, *rng.choice(np.arange(1, 31), size=6, replace=False)])) for u in range(1, 41)]
    (tmp_path / "Shop.txt").write_text("\n".join(lines) + "\n")
    asins = {item: f"B00{item:07d}X" for item in range(1, 31)}
    pd.DataFrame({"item_id": list(asins), "asin": list(asins.values())}).to_csv(
        tmp_path / "Shop_item_asin.tsv", sep="\t", index=False
    )
    data = load_amazon_sequences(tmp_path, file="Shop.txt")
    create_model("ease").fit(data, TrainOptions(seed=0)).save(tmp_path / "knn", catalogue=data)
    output = _run("recommend", "--model", str(tmp_path / "knn"), "--item", asins[7].lower(), "-k", "5")
    assert f"new user with {asins[7]} [7]" in " ".join(output.split())
    rows = _table_rows(output)
    assert len(rows) == 5 and all(row[2] == asins[int(row[1])] and len(row) == 4 for row in rows)
    listed = _run("recommend", "--model", str(tmp_path / "knn"), "--user", "1", "-k", "3")
    header = next(line for line in listed.splitlines() if "rank" in line)
    assert "title" in header and "genres" not in header and "because" not in header
