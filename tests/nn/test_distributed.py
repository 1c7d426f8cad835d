"""Distributed training (2 processes under torchrun, gloo on CPU) and resumable per-epoch checkpoints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recforge.errors import ConfigError
from recforge.nn.checkpoint import Checkpointer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]
WORKER = Path(__file__).with_name("ddp_train.py")


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_worker(model: str, out: Path, processes: int = 1, checkpoints: Path | None = None) -> dict:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        f"--master_port={_port()}",
    ]
    command = [*(launcher if processes > 1 else [sys.executable]), str(WORKER), model, str(out)]
    command += [str(checkpoints)] if checkpoints else []
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=600)
    return load(out)


def load(path: Path) -> dict:
    arrays = dict(np.load(path))
    arrays["__log__"] = json.loads(arrays["__log__"].tobytes())
    return arrays


def weights(result: dict) -> dict[str, np.ndarray]:
    return {k: v for k, v in result.items() if not k.startswith("__")}


def test_sasrec_on_two_processes_follows_the_single_process_run(data_dir, tmp_path):
    single = run_worker("sasrec", tmp_path / "single.npz")
    parallel = run_worker("sasrec", tmp_path / "ddp.npz", processes=2)
    losses = [e["loss"] for e in parallel["__log__"]]
    assert losses[-1] < losses[0] - 0.5  # rank 0's loss falls
    # cross-entropy without dropout is deterministic: each step's DDP gradient is the global batch's gradient
    for name, value in weights(single).items():
        np.testing.assert_allclose(parallel[name], value, atol=2e-3, err_msg=name)
    assert abs(float(parallel["__ndcg__"]) - float(single["__ndcg__"])) < 0.005


def test_two_tower_on_two_processes_matches_single_process_quality(data_dir, tmp_path):
    single = run_worker("two_tower", tmp_path / "single.npz")
    parallel = run_worker("two_tower", tmp_path / "ddp.npz", processes=2)
    losses = [e["loss"] for e in parallel["__log__"]]
    assert losses[-1] < losses[0]
    # history dropout draws per shard, so runs agree in quality, not weight by weight
    assert float(single["__ndcg__"]) > 0.25
    assert abs(float(parallel["__ndcg__"]) - float(single["__ndcg__"])) < 0.02


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(data_dir, tmp_path):
    uninterrupted = run_worker("sasrec", tmp_path / "full.npz", checkpoints=tmp_path / "full-ckpt")
    folder = tmp_path / "ckpt"
    command = [sys.executable, str(WORKER), "sasrec", str(tmp_path / "killed.npz"), str(folder)]
    victim = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    checkpoint = Checkpointer(folder, fingerprint="")  # only its header is read here
    while time.time() < deadline and checkpoint.epoch() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    stopped_after = checkpoint.epoch()
    assert 1 <= stopped_after < 4 and not (tmp_path / "killed.npz").exists()
    resumed = run_worker("sasrec", tmp_path / "resumed.npz", checkpoints=folder)
    assert resumed["__saved_epochs__"].tolist() == list(range(stopped_after + 1, 5))  # it did not start over
    assert uninterrupted["__saved_epochs__"].tolist() == [1, 2, 3, 4]
    assert [e["epoch"] for e in resumed["__log__"]] == [1, 2, 3, 4]
    for name, value in weights(uninterrupted).items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_a_checkpoint_from_another_run_is_refused(tmp_path):
    import torch

    Checkpointer(tmp_path, "run-a").save(1, {"x": torch.zeros(2)})
    with pytest.raises(ConfigError, match="another run"):
        Checkpointer(tmp_path, "run-b").load()
    assert Checkpointer(tmp_path, "run-a").load()["epoch"] == 1


def test_checkpoint_state_round_trips_with_its_types(tmp_path):
    import torch

    shared = torch.arange(6.0)
    state = {
        "net": {"embedding.weight": shared, "output.weight": shared},  # tied weights share storage
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "foreach": None}],
        },
        "log": [{"epoch": 1, "loss": 2.5}],
        "stopper": {"best": None, "best_state": None, "stale": 0},
        "stopped": False,
    }
    Checkpointer(tmp_path, "run").save(7, state)
    loaded = Checkpointer(tmp_path, "run").load()
    assert loaded["epoch"] == 7 and loaded["log"] == state["log"] and loaded["stopper"] == state["stopper"]
    assert list(loaded["optimizer"]["state"]) == [0]  # integer keys stay integers
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["exp_avg"], torch.ones(2, 3))
    torch.testing.assert_close(loaded["net"]["output.weight"], shared)
    with pytest.raises(ConfigError, match="not saved"):
        Checkpointer(tmp_path, "run").save(8, {"opaque": object()})
    assert Checkpointer(tmp_path, "run").epoch() == 7  # a failed save leaves the last checkpoint intact


@pytest.mark.parametrize(
    "content",
    [b"\x80\x04 a pickle is never executed", b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"],
    ids=["pickle", "empty", "foreign-safetensors"],
)
def test_a_corrupt_or_foreign_checkpoint_is_refused_by_name(tmp_path, content):
    (tmp_path / "checkpoint.safetensors").write_bytes(content)
    with pytest.raises(ConfigError, match=r"checkpoint\.safetensors"):
        Checkpointer(tmp_path, "run").load()


def test_a_truncated_checkpoint_is_refused(tmp_path):
    import torch

    checkpointer = Checkpointer(tmp_path, "run")
    checkpointer.save(1, {"x": torch.zeros(1000)})
    checkpointer.path.write_bytes(checkpointer.path.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="checkpoint"):
        checkpointer.load()


class _Crash(Exception):
    pass


def test_a_two_tower_run_that_died_after_a_checkpoint_resumes_to_the_same_weights(ml100k, tmp_path, monkeypatch):
    import torch

    from recforge.models import create_model
    from recforge.models.config import TrainOptions

    params = {"preset": "retrieval", "n_epochs": 4, "history_dim": 64}
    uninterrupted = create_model("two_tower", **params).fit(ml100k, TrainOptions(seed=0))
    save = Checkpointer.save

    def save_then_die(self, epoch, state):
        save(self, epoch, state)
        if epoch == 2:
            raise _Crash  # the process dies right after epoch 2's checkpoint reached the disk

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(_Crash):
        create_model("two_tower", **params).fit(ml100k, TrainOptions(seed=0, checkpoint_dir=str(tmp_path)))
    assert Checkpointer(tmp_path, fingerprint="").epoch() == 2
    trained_epochs = []

    def save_and_note(self, epoch, state):
        trained_epochs.append(epoch)
        save(self, epoch, state)

    monkeypatch.setattr(Checkpointer, "save", save_and_note)
    resumed = create_model("two_tower", **params).fit(ml100k, TrainOptions(seed=0, checkpoint_dir=str(tmp_path)))
    assert trained_epochs == [3, 4]  # it continued after epoch 2 instead of starting over
    assert [e["epoch"] for e in resumed.training_log_] == [1, 2, 3, 4]
    assert resumed.training_log_ == uninterrupted.training_log_
    for name, value in uninterrupted.towers_.state_dict().items():
        torch.testing.assert_close(resumed.towers_.state_dict()[name], value, rtol=0, atol=0, msg=name)
    np.testing.assert_array_equal(resumed.item_factors_, uninterrupted.item_factors_)
