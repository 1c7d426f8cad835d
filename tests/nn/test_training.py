"""The shared epoch loop on a toy trainer whose metrics are scripted: early stopping follows the metric's
direction from the metric table, the best weights come back, devices are checked, checkpoints resume."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from recforge.errors import ConfigError, TrainingDivergedError
from recforge.models import create_model
from recforge.models.config import TrainOptions
from recforge.nn.checkpoint import Checkpointer
from recforge.nn.training import EpochContext, EpochPlan, fit_epochs, resolve_device


class Scripted:
    """Weight w = the epoch it was last trained in; validation reports `values[epoch - 1]`."""

    def __init__(self, metric: str, values: list[float], losses: list[float] | None = None) -> None:
        self.metric, self.values, self.losses = metric, values, losses
        self.w = torch.zeros(1)
        self.epoch = 0
        self.trained: list[int] = []
        self.devices: list[str] = []

    def to(self, device: torch.device) -> None:
        self.devices.append(str(device))

    def train_epoch(self, context: EpochContext) -> dict[str, float]:
        self.epoch = context.epoch
        self.trained.append(context.epoch)
        self.w.fill_(context.epoch)
        return {"loss": self.losses[context.epoch - 1] if self.losses else 1.0 / context.epoch}

    def validate(self) -> dict[str, float]:
        return {self.metric: self.values[self.epoch - 1]}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w.copy_(state["w"])

    def weights(self) -> dict[str, torch.Tensor]:
        return {"w": self.w}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.w.copy_(weights["w"])


@pytest.mark.parametrize(
    ("metric", "values", "best_epoch", "epochs_run"),
    [
        ("valid_rmse", [1.0, 0.9, 0.95, 0.97, 0.99, 0.8], 2, 4),  # lower is better; stops after 2 stale
        ("valid_ndcg@10", [0.1, 0.3, 0.2, 0.25, 0.29, 0.5], 2, 4),  # higher is better
        ("top10_accuracy", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 6, 6),  # keeps improving: all epochs run
    ],
)
def test_early_stopping_follows_the_metric_direction_and_restores_the_best(metric, values, best_epoch, epochs_run):
    trainer = Scripted(metric, values)
    log = fit_epochs(trainer, EpochPlan(n_epochs=6, monitor=metric, patience=2), TrainOptions())
    assert len(log) == epochs_run and [e["epoch"] for e in log] == list(range(1, epochs_run + 1))
    assert float(trainer.w) == best_epoch and log[0][metric] == values[0]
    assert trainer.devices == ["cpu", "cpu"]  # placed on the device, handed back on the CPU


def test_without_a_monitor_nothing_is_validated_or_restored():
    trainer = Scripted("valid_rmse", [0.1, 5.0, 9.0])
    log = fit_epochs(trainer, EpochPlan(n_epochs=3), TrainOptions())
    assert float(trainer.w) == 3 and "valid_rmse" not in log[-1]


def test_a_diverging_loss_stops_the_fit_by_name():
    trainer = Scripted("valid_rmse", [1.0, 1.0], losses=[1.0, float("nan")])
    with pytest.raises(TrainingDivergedError, match="epoch 2"):
        fit_epochs(trainer, EpochPlan(n_epochs=2, description="toy"), TrainOptions())


def test_devices_are_checked_not_silently_replaced(small):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            create_model("sasrec", n_epochs=1, dim=8, max_len=5).fit(small, TrainOptions(device="cuda"))
    model = create_model("sasrec", n_epochs=1, dim=8, max_len=5).fit(small, TrainOptions(device="auto"))
    assert all(p.device.type == "cpu" for p in model.net_.parameters())  # the fitted model scores on the CPU


def test_a_resumed_loop_skips_finished_epochs_and_keeps_the_log(tmp_path):
    checkpoints = Checkpointer(tmp_path, "toy-run")
    first = Scripted("valid_rmse", [1.0, 0.5, 0.7, 0.6])
    fit_epochs(first, EpochPlan(n_epochs=2, monitor="valid_rmse"), TrainOptions(), checkpoints)
    again = Scripted("valid_rmse", [1.0, 0.5, 0.7, 0.6])
    log = fit_epochs(again, EpochPlan(n_epochs=4, monitor="valid_rmse"), TrainOptions(), checkpoints)
    assert [e["epoch"] for e in log] == [1, 2, 3, 4] and again.trained == [3, 4]  # not 1 and 2 again
    assert float(again.w) == 2  # the best (0.5, epoch 2) survived the restart through the checkpoint
