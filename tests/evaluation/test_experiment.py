"""Declarative experiments and reports, end to end on MovieLens 100K."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from recforge.cli import app
from recforge.errors import ConfigError, LeakageError
from recforge.evaluation.report import write_report
from recforge.experiment import load_config, run_experiment

CONFIG = """
name = "ml100k-baselines"
seed = 7
[dataset]
name = "ml-100k"
[split]
kind = "per_user"
test_fraction = 0.2
[split.validation]
kind = "per_user"
test_fraction = 0.1
[evaluation]
protocols = ["ranking", "rating"]
ks = [5, 10]
diversity_features = "genres"
[[models]]
model = "weighted_popularity"
search = { vote_quantile = [0.5, 0.9] }
[[models]]
name = "biases (weak shrinkage)"
model = "bias"
params = { reg_user = 1.0, reg_item = 1.0 }
"""


def test_compare_cli_writes_report_and_is_reproducible(tmp_path, data_dir):
    config = tmp_path / "experiment.toml"
    config.write_text(CONFIG)
    runner = CliRunner()
    first, second = tmp_path / "run1", tmp_path / "run2"
    for output in (first, second):
        result = runner.invoke(app, ["compare", str(config), "--output", str(output)])
        assert result.exit_code == 0, result.output
    assert (first / "metrics.json").read_bytes() == (second / "metrics.json").read_bytes()
    report = (first / "report.md").read_text()
    assert "full ranking, training items excluded" in report and "significance" in report
    for png in (first / "plots").glob("*.png"):
        assert mpimg.imread(png).shape[0] > 100  # decodes as an image
    assert {p.name for p in (first / "plots").glob("*.png")} >= {
        "ratings_distribution.png",
        "metric_at_k_ranking.png",
        "popularity_ranking.png",
    }
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["data_fingerprint"] and metrics["source_sha256"]["u.data"].startswith("06416e59")
    runs = {r["model"]: r for r in metrics["runs"]}
    assert set(runs) == {"most_popular", "global_mean", "bias", "weighted_popularity", "biases (weak shrinkage)"}
    assert "rating" not in runs["most_popular"]["results"] and "ranking" not in runs["global_mean"]["results"]
    per_user = pd.read_parquet(first / "per_user.parquet")
    assert per_user.query("protocol == 'ranking' and model == 'most_popular'")["user"].nunique() == 943
    html = (first / "report.html").read_text()
    assert "<table" in html and 'src="plots/ratings_distribution.png"' in html
    run = json.loads((first / "run.json").read_text())
    assert len(run["search"]["weighted_popularity"]) == 2


def test_fit_on_all_is_refused(data_dir):
    config = {
        "dataset": {"name": "ml-100k"},
        "split": {"kind": "random", "test_fraction": 0.2},
        "models": [{"model": "most_popular", "fit_on": "all"}],
        "baselines": False,
    }
    with pytest.raises(ConfigError, match="trains on the test interactions"):
        run_experiment(config)


def test_duplicated_rows_leaking_into_test_are_refused(tmp_path):
    rows = "".join(f"u{u},i{i},{1 + (u + i) % 5}\n" for u in range(30) for i in range(20))
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\n" + rows + rows)  # every rating twice: a random split puts copies on both sides
    config = {
        "dataset": {
            "name": "table",
            "path": str(path),
            "options": {"user": "user", "item": "item", "rating": "rating"},
        },
        "split": {"kind": "random", "test_fraction": 0.2},
    }
    with pytest.raises(LeakageError, match="also appear in training"):
        run_experiment(config)
    config["preprocess"] = [{"step": "deduplicate"}]
    assert run_experiment(config).runs


def test_config_errors_are_precise(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[dataset]\nname = "ml-100k"\n[split]\nkind = "per_user"\n[evaluation]\nprotocol = ["ranking"]\n')
    with pytest.raises(ConfigError, match="protocol"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown split kind"):
        run_experiment({"dataset": {"name": "ml-100k"}, "split": {"kind": "shuffled"}})


def test_cli_describe(data_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "describe", "ml-100k", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n_interactions"] == 100000
    result = runner.invoke(app, ["data", "describe", "amazon-beauty"])
    assert result.exit_code == 0 and "22,363" in result.output and "198,502" in result.output
    result = runner.invoke(app, ["data", "describe", "anime-mal"])
    assert result.exit_code == 2 and "error:" in result.output
    assert "error:" in result.stderr and not result.stdout  # not mixed into what a pipe reads


def test_write_report_is_atomic(tmp_path, data_dir):
    result = run_experiment({"dataset": {"name": "ml-100k"}, "split": {"kind": "per_user"}, "evaluation": {"ks": [10]}})
    target = tmp_path / "report"
    write_report(result, target)
    assert (target / "report.md").exists() and not list(Path(tmp_path).glob(".report.*"))


def test_rating_knn_is_not_ranked_and_models_below_popularity_are_flagged(tmp_path, data_dir):
    config = {
        "name": "floors",
        "dataset": {"name": "ml-100k"},
        "split": {"kind": "per_user", "test_fraction": 0.2},
        "evaluation": {"protocols": ["ranking", "rating"], "ks": [10]},
        "models": [
            {"name": "item_knn (rating)", "model": "item_knn"},
            {"name": "mf (ranks by predicted rating)", "model": "mf", "params": {"n_epochs": 5}},
            {"model": "weighted_popularity"},
        ],
    }
    result = run_experiment(config)
    knn = next(r for r in result.runs if r.label == "item_knn (rating)")
    assert set(knn.results) == {"rating"} and "feedback='implicit'" in knn.skipped["ranking"]
    popular = next(r for r in result.runs if r.model == "most_popular").results["ranking"].summary["ndcg@10"]
    for label in ("mf (ranks by predicted rating)", "weighted_popularity"):
        run = next(r for r in result.runs if r.label == label)
        assert run.results["ranking"].summary["ndcg@10"] < popular
    write_report(result, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Warnings" in report and "mf (ranks by predicted rating) (ranking) is below most_popular" in report
    assert "weighted_popularity (ranking) is below" not in report  # a baseline: a reference, not held to it
    significance = report.split("## ranking — significance\n")[1].split("\n## ")[0]
    (row,) = [line for line in significance.splitlines() if line.startswith("| mf (ranks")]
    p, p_holm = row.split(" | ")[4:6]  # two significant digits, not 0.0000 for a p of 1e-40
    assert float(p) == float(p_holm) < 1e-6 and "e-" in p
    assert "item_knn (rating)** (ranking): not evaluated" in report
    assert "item_knn (rating) (rating) is below" not in report  # its RMSE beats the global mean


def test_a_tables_side_files_are_read_from_the_configs_folder(tmp_path):
    (tmp_path / "exp").mkdir()
    config = tmp_path / "exp" / "shop.toml"
    config.write_text(
        '[dataset]\nname = "table"\npath = "log.csv"\n'
        'options = { user = "u", item = "i", items = "catalogue.csv", users = "../people.csv" }\n'
        '[split]\nkind = "per_user"\n'
    )
    dataset = load_config(config).dataset
    assert dataset.path == str(tmp_path / "exp" / "log.csv")
    assert dataset.options["items"] == str(tmp_path / "exp" / "catalogue.csv")
    assert dataset.options["users"] == str(tmp_path / "people.csv")  # was read from the working directory


def test_python_model_parameters_get_the_same_hints_as_configs():
    """`create_model("two_tower", seed=0)` was a pydantic dump ("Extra inputs are not permitted")."""
    from recforge.models import create_model

    with pytest.raises(ConfigError, match=r"^model 'ials': n_factor: not a known setting \(did you mean 'n_factors'"):
        create_model("ials", n_factor=8)
    with pytest.raises(ConfigError, match=r"seed is how a model is trained.*TrainOptions\(seed=\.\.\.\)"):
        create_model("ials", seed=0)
    with pytest.raises(ConfigError, match=r"user_tower\.id_dimm: not a known setting \(did you mean 'id_dim'"):
        create_model("two_tower", user_tower={"id_dimm": 8})
    with pytest.raises(ConfigError, match=r"^model 'ials': reg: Input should be greater than or equal to 0$"):
        create_model("ials", reg=-1.0)


def test_a_typo_in_a_model_parameter_fails_at_load_naming_it(tmp_path, monkeypatch):
    from recforge.data import loaders

    def no_data(*args, **kwargs):  # the config must fail before any data is read
        raise AssertionError("data was read")

    monkeypatch.setattr(loaders, "load_dataset", no_data)
    path = tmp_path / "typo.toml"
    body = '[dataset]\nname = "ml-100k"\n[split]\nkind = "per_user"\n'
    path.write_text(body + '[[models]]\nmodel = "ials"\nparams = { n_factor = 8 }\n')
    with pytest.raises(ConfigError, match=r"models\.0.*'ials'.*n_factor.*did you mean 'n_factors'"):
        load_config(path)
    path.write_text(body + '[[models]]\nmodel = "ials"\nsearch = { reg = [1.0, -5.0] }\n')
    with pytest.raises(ConfigError, match="reg"):
        load_config(path)  # every grid point is checked against the model's config
    path.write_text(body + '[[models]]\nmodel = "iasl"\n')
    with pytest.raises(ConfigError, match="did you mean 'ials'"):
        load_config(path)
    path.write_text(body.replace("per_user", "per_usr"))
    with pytest.raises(ConfigError, match="unknown split kind 'per_usr'"):
        load_config(path)
    # a misspelt setting is named with the closest one of its own section, or the section's settings listed
    path.write_text(body.replace('"per_user"\n', '"per_user"\ntest_fracton = 0.1\n'))
    with pytest.raises(
        ConfigError, match=r"split\.per_user\.test_fracton: not a known setting \(did you mean 'test_fraction'"
    ):
        load_config(path)
    path.write_text(body + '[[preprocess]]\nstep = "filter_user_counts"\nmin = 5\n')
    with pytest.raises(
        ConfigError, match=r"filter_user_counts\.min: not a known setting \(known here: max_count, min_count, step\)"
    ):
        load_config(path)
    path.write_text(body + "[evaluation]\nkz = [10]\n")
    with pytest.raises(ConfigError, match=r"evaluation\.kz: not a known setting \(known here: .*\bks\b"):
        load_config(path)
    path.write_text(body + "test_fraction = 1.5\n")
    with pytest.raises(ConfigError, match="test_fraction"):
        load_config(path)
    path.write_text(body + '[[preprocess]]\nstep = "filter_user_counts"\nmin_cont = 5\n')
    with pytest.raises(ConfigError, match="min_cont"):
        load_config(path)
    blend = '[[models]]\nmodel = "blend"\nparams = { members = [{ model = "ease", params = { regg = 1 } }] }\n'
    path.write_text(body + blend)
    with pytest.raises(ConfigError, match="regg"):
        load_config(path)


def test_a_training_config_refuses_experiment_only_keys(tmp_path):
    from recforge.train import load_train_config

    path = tmp_path / "train.toml"
    path.write_text('[dataset]\nname = "ml-100k"\n[model]\nmodel = "ials"\nsearch = { reg = [1.0] }\n')
    with pytest.raises(ConfigError, match=r"model\.search: not a known setting"):
        load_train_config(path)


@pytest.mark.slow
def test_kfold_reports_every_fold_and_their_mean(tmp_path, data_dir):
    """5-fold cross-validation of biased MF on ML-100K, as Surprise's documentation reports it (SVD:
    RMSE 0.934 over 5 folds): every fold runs, the report gives mean ± CI over the folds."""
    config = {
        "name": "kfold",
        "dataset": {"name": "ml-100k"},
        "split": {"kind": "kfold", "n_folds": 5},
        "evaluation": {"protocols": ["rating"]},
        "models": [{"model": "mf"}],
    }
    result = run_experiment(config)
    rmse = [run.results["rating"].summary["rmse"] for run in result.runs if run.label == "mf"]
    assert len(rmse) == 5 and len({round(r, 6) for r in rmse}) == 5  # five different test folds
    assert float(np.mean(rmse)) < 0.934  # below Surprise's SVD on the same protocol
    write_report(result, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "over seeds and folds" in report and f"{np.mean(rmse):.4f}" in report


def test_reports_show_every_requested_cutoff_and_test_every_metric(tmp_path, data_dir):
    """ks = [5, 20]: the primary metric defaults to ndcg@5 (ndcg@10 is not measured), the significance
    sections are there, and precision/MAP at both cut-offs reach the report's tables."""
    config = {
        "name": "cutoffs",
        "dataset": {"name": "ml-100k"},
        "split": {"kind": "per_user"},
        "evaluation": {"ks": [5, 20]},
        "models": [{"model": "ials", "params": {"n_iterations": 5}}],
    }
    result = run_experiment(config)
    assert result.config.evaluation.primary_metric == "ndcg@5"
    write_report(result, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "ranking — significance\n" in report and "significance on every metric" in report
    for column in ("precision@5", "map@20", "hit_rate@20", "mrr@5"):
        assert column in report
    grid = report.split("significance on every metric")[1]
    assert "| ials |" in grid and "+" in grid  # iALS beats popularity significantly on some metric

    with pytest.raises(ConfigError, match=r"ndcg@10.*not measured"):
        load_config_from({**config, "evaluation": {"ks": [5, 20], "primary_metric": "ndcg@10"}})


def load_config_from(payload):
    from recforge.experiment import ExperimentConfig, parse_config

    return parse_config(payload, ExperimentConfig)


def test_training_curves_put_each_validation_metric_on_its_own_axis(tmp_path):
    import matplotlib.pyplot as plt

    from recforge.evaluation import plots

    logs = {
        "mf": [{"epoch": e, "loss": 0.9 / e, "valid_rmse": 1.0 - 0.01 * e} for e in range(1, 6)],
        "sasrec": [{"epoch": e, "loss": 8.0 / e, "valid_ndcg@10": 0.02 * e} for e in range(1, 6)],
        "bias": [],
    }
    closed = []
    original = plots._save
    plots._save = lambda figure, path: (
        closed.append([a for a in figure.axes if a.get_visible()]),
        original(figure, path),
    )[1]
    try:
        path = plots.training_curves(logs, tmp_path / "curves.png")
    finally:
        plots._save = original
    assert path is not None and path.exists()
    axes = closed[0]
    assert [a.get_title() for a in axes] == ["training loss (relative)", "valid_ndcg@10", "valid_rmse"]
    relative = {line.get_label(): line.get_ydata() for line in axes[0].get_lines()}
    assert relative["mf"][0] == relative["sasrec"][0] == 1.0  # both start at 1: one scale for all losses
    plt.close("all")


def test_misspelt_names_get_a_suggestion(tmp_path, data_dir):
    from recforge.data.loaders import load_dataset

    with pytest.raises(ConfigError, match=r"did you mean 'ml-100k'\?"):
        load_dataset("ml100k")
    config = tmp_path / "typo.toml"
    config.write_text('[dataset]\nname = "ml-100k"\n[split]\nkind = "per-user"\n[[preprocess]]\nstep = "dedupe"\n')
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert "unknown split kind 'per-user' (did you mean 'per_user'?)" in str(error.value)
    assert "unknown step 'dedupe'" in str(error.value)


def test_data_prepare_needs_no_split(tmp_path, data_dir):
    from recforge.data.interactions import Interactions

    config = tmp_path / "prepare.toml"
    config.write_text('[dataset]\nname = "ml-100k"\n[[preprocess]]\nstep = "filter_user_counts"\nmin_count = 50\n')
    result = CliRunner().invoke(app, ["data", "prepare", str(config), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    prepared = Interactions.load(tmp_path / "out")
    assert len(prepared) == 88_471 and prepared.user_counts()[prepared.user_counts() > 0].min() >= 50


@pytest.mark.parametrize(
    "name",
    ["anime_kaggle", "anime_model2", "beauty_sequential", "ml100k_classic", "ml100k_ratings", "ml100k_sequential"],
)
def test_the_shipped_experiments_load_with_every_models_parameters_checked(name):
    """A typo in a shipped experiment (a model parameter, a split kind) fails here, not minutes into a run."""
    config = load_config(Path(__file__).parents[2] / "experiments" / f"{name}.toml")
    assert config.models
    for model in config.models:
        model.model_config_for(model.params)  # raises ConfigError on an unknown or invalid parameter


def test_a_model_too_large_for_memory_is_reported_not_run_and_the_rest_compared(tmp_path, data_dir, monkeypatch):
    """EASE's n_items² solve refused (the machine reports 10 MB free): its row says why, the other models
    are still fitted, evaluated and reported, and the CLI exits 0."""
    from recforge.models import memory

    monkeypatch.delenv("RECFORGE_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000_000)
    config = tmp_path / "experiment.toml"
    config.write_text(
        """
name = "too-large"
[dataset]
name = "ml-100k"
[split]
kind = "per_user"
test_fraction = 0.2
[evaluation]
protocols = ["ranking", "rating"]
ks = [10]
[[models]]
model = "ease"
[[models]]
model = "ials"
params = { n_factors = 16, n_iterations = 3 }
"""
    )
    output = tmp_path / "out"
    result = CliRunner().invoke(app, ["compare", str(config), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "not evaluated" in result.output and "InsufficientMemory" not in result.output
    report = (output / "report.md").read_text()
    assert "**ease** (ranking): not evaluated: not run: ease: the dense 1,682 x 1,682 item-item matrices" in report
    assert "(rating)" not in report.split("**ease**")[1].split("\n")[0]  # EASE was never a rating model
    metrics = json.loads((output / "metrics.json").read_text())
    assert "ials" in json.dumps(metrics) and "most_popular" in json.dumps(metrics)


def test_loader_options_under_dataset_are_pointed_to_options_and_side_files_follow_the_config(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "train.toml"
    path.write_text('[dataset]\nname = "table"\npath = "log.csv"\nuser = "who"\n')
    with pytest.raises(ConfigError, match=r"dataset.user: not a known setting.*options = \{ user = \.\.\. \}"):
        load_config(path)
    path.write_text(
        '[dataset]\nname = "table"\npath = "log.csv"\noptions = { user = "who", items = "items.csv" }\n'
        '[split]\nkind = "per_user"\n'
    )
    config = load_config(path)
    assert config.dataset.options["items"] == str((tmp_path / "conf" / "items.csv").resolve())
    assert config.dataset.path == str((tmp_path / "conf" / "log.csv").resolve())
