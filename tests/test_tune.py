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
from recforge.experiment import ExperimentModel
from recforge.tune import TuneConfig, tune

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
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert loaded.best_value == min(t.value for t in complete)
    assert 0.85 < loaded.best_value < 1.05  # validation RMSE of a real MF fit

    best = toml_loads((tmp_path / "best.toml").read_text())["models"][0]
    entry = ExperimentModel(**best)  # an experiment accepts it as it is
    assert entry.model == "mf" and entry.params["n_epochs"] == 6 and 4 <= entry.params["n_factors"] <= 64


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
