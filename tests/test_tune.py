"""`recforge tune` on ML-100K: Optuna searches on the validation carve-out only, the study resumes from
its SQLite file, pruning sees per-epoch validation values, and the best parameters come back as TOML
that an experiment config accepts."""

from __future__ import annotations

import optuna
import pytest
from typer.testing import CliRunner

from recforge._toml import loads as toml_loads
from recforge.cli import app
from recforge.errors import ConfigError
from recforge.experiment import ExperimentModel, load_config
from recforge.tune import TuneConfig, best_as_toml, tune

CONFIG = """
name = "tune-mf"
seed = 0
[dataset]
name = "ml-100k"
[split]
kind = "random"
test_fraction = 0.2
[split.validation]
kind = "random"
test_fraction = 0.1
[evaluation]
protocols = ["rating"]
[tune]
model = "mf"
trials = 3
fixed = { n_epochs = 6 }
[tune.params]
n_factors = { low = 4, high = 64, log = true }
lr = { low = 0.003, high = 0.03, log = true }
"""


def test_tune_searches_resumes_and_writes_the_best_as_toml(tmp_path, data_dir):
    config = tmp_path / "tune.toml"
    config.write_text(CONFIG)
    study = tmp_path / "study.sqlite"
    runner = CliRunner()
    first = runner.invoke(app, ["tune", str(config), "--study", str(study), "--output", str(tmp_path / "best.toml")])
    assert first.exit_code == 0, first.output
    loaded = optuna.load_study(study_name="tune-mf", storage=f"sqlite:///{study}")
    assert len(loaded.trials) == 3
    assert all(t.intermediate_values for t in loaded.trials)  # per-epoch validation RMSE reached the pruner

    more = runner.invoke(app, ["tune", str(config), "--study", str(study), "--trials", "5"])  # resumes: 2 more
    assert more.exit_code == 0, more.output
    loaded = optuna.load_study(study_name="tune-mf", storage=f"sqlite:///{study}")
    assert len(loaded.trials) == 5
    points = [tuple(sorted(t.params.items())) for t in loaded.trials]
    assert len(set(points)) == 5  # the resumed run measured new points, not the first run's again
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert loaded.best_value == min(t.value for t in complete)
    assert 0.85 < loaded.best_value < 1.05  # validation RMSE of a real MF fit

    best = toml_loads((tmp_path / "best.toml").read_text())["models"][0]
    entry = ExperimentModel(**best)  # an experiment accepts it as it is
    assert entry.model == "mf" and entry.params["n_epochs"] == 6 and 4 <= entry.params["n_factors"] <= 64


@pytest.mark.parametrize(
    "params",
    [
        {"n_factors": 16, "reg": 0.08},  # short enough that TOML writers put it on one line
        {"members": [{"model": "ease", "params": {"reg": 300.0}}, {"model": "ials", "weight": 0.4}]},
        {},
    ],
)
def test_the_best_parameters_can_be_appended_to_an_experiment_config(tmp_path, params):
    """`cat best.toml >> run.toml`: the file was `models = [...]`, which after the config's last [table]
    belongs to that table ("evaluation.models: not a known setting"); a `[[models]]` header does not."""
    model = "blend" if "members" in params else "ials"
    result = {"complete": 4, "validation": "random 90%/10%", "metric": "ndcg@10", "best_value": 0.15}
    result |= {"model": model, "best_params": params}
    experiment = CONFIG.split("[split.validation]")[0] + '[evaluation]\nprotocols = ["ranking"]\n'
    config = tmp_path / "run.toml"
    config.write_text(experiment + best_as_toml(result))
    loaded = load_config(config)
    assert [(entry.model, entry.params) for entry in loaded.models] == [(model, params)]


def test_a_study_path_that_is_not_a_study_is_refused_untouched(tmp_path):
    """`--study results.csv` was a SQLAlchemy DatabaseError traceback ("file is not a database")."""
    config = tmp_path / "tune.toml"
    config.write_text(CONFIG)
    other = tmp_path / "results.csv"
    other.write_text("user_id,item_id\n1,50\n")
    result = CliRunner().invoke(app, ["tune", str(config), "--study", str(other)])
    assert result.exit_code == 2 and "results.csv is not a study (an SQLite database)" in result.output
    assert other.read_text() == "user_id,item_id\n1,50\n"
    result = CliRunner().invoke(app, ["tune", str(config), "--study", str(tmp_path)])
    assert result.exit_code == 2 and "is not a study" in result.output


def test_tuning_never_touches_the_test_part_and_checks_the_space_at_load(data_dir):
    payload = toml_loads(CONFIG)
    without = {**payload, "split": {"kind": "random", "test_fraction": 0.2}}
    with pytest.raises(ValueError, match="validation carve-out"):
        TuneConfig.model_validate(without)
    bad = {**payload, "tune": {**payload["tune"], "params": {"n_factor": {"low": 4, "high": 8}}}}
    with pytest.raises(ValueError, match="n_factor"):
        TuneConfig.model_validate(bad)
    config = TuneConfig.model_validate(payload)
    assert config.metric == "rmse"
    with pytest.raises(ConfigError):
        tune(TuneConfig.model_validate({**payload, "tune": {**payload["tune"], "trials": 1}}), "/nonexistent/dir/s.db")


BLEND_CONFIG = """
name = "tune-blend"
seed = 0
[dataset]
name = "ml-100k"
[split]
kind = "per_user"
test_fraction = 0.2
[split.validation]
kind = "per_user"
test_fraction = 0.1
[evaluation]
protocols = ["ranking"]
ks = [10]
[tune]
model = "blend"
trials = 6
sampler = "random"
fixed = { members = [{ model = "ease" }, { model = "ials", params = { n_factors = 16, n_iterations = 4 } }] }
[tune.params]
"members.1.weight" = { low = 0.0, high = 1.5 }
"""


def test_a_blends_member_weights_are_tuned_with_its_members_fitted_once(tmp_path, data_dir, monkeypatch):
    from recforge.models.ensemble import Blend
    from recforge.models.registry import model_class

    fits = {"ease": 0, "ials": 0}
    for name in fits:
        cls = model_class(name)
        real = cls._fit

        def counted(self, train, options, real=real, name=name):
            fits[name] += 1
            return real(self, train, options)

        monkeypatch.setattr(cls, "_fit", counted)
    config = TuneConfig.model_validate(toml_loads(BLEND_CONFIG))
    assert config.tune.weights_only
    result = tune(config, tmp_path / "study.sqlite")
    assert fits == {"ease": 1, "ials": 1} and result["complete"] == 6
    members = result["best_params"]["members"]
    assert (members[0]["model"] == "ease" and "weight" not in members[0]) or members[0].get("weight", 1.0) == 1.0
    assert 0.0 <= members[1]["weight"] <= 1.5 and members[1]["params"]["n_factors"] == 16
    assert ExperimentModel(**toml_loads(best_as_toml(result))["models"][0]).model == "blend"

    # the shared-members score is the score of that blend fitted from scratch
    from recforge.data.loaders import load_dataset
    from recforge.experiment import validation_evaluator

    split = config.split.make(load_dataset("ml-100k"), 0)
    inner = config.split.validation.make(split.train, 0)
    fresh = Blend(members=members).fit(inner.train)
    value = validation_evaluator(config, inner, config.metric).evaluate(fresh).summary[config.metric]
    assert abs(value - result["best_value"]) < 1e-9


def test_member_weights_are_checked_at_load(data_dir):
    payload = toml_loads(BLEND_CONFIG)
    bad_index = {**payload, "tune": {**payload["tune"], "params": {"members.2.weight": {"low": 0.0, "high": 1.0}}}}
    with pytest.raises(ValueError, match=r"members\.2\.weight: the blend has 2 members"):
        TuneConfig.model_validate(bad_index)
    not_a_blend = toml_loads(CONFIG)
    not_a_blend["tune"]["params"] = {"members.0.weight": {"low": 0.0, "high": 1.0}}
    with pytest.raises(ValueError, match="parameter of blends"):
        TuneConfig.model_validate(not_a_blend)


@pytest.mark.parametrize("name", ["ml100k_tune_mf", "ml_latest_small_blend_weights"])
def test_the_shipped_tuning_configs_load_with_their_spaces_checked(name):
    from pathlib import Path

    from recforge.tune import load_tune_config

    config = load_tune_config(Path(__file__).parents[1] / "experiments" / f"{name}.toml")
    assert config.tune.params and (config.tune.weights_only == (config.tune.model == "blend"))
