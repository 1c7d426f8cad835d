"""Worker for tests/nn/test_distributed.py: `torchrun --nproc_per_node N ddp_train.py MODEL OUT [CHECKPOINTS]`
trains MODEL on MovieLens 100K (per-user 80/20 train split, seed 0) and (rank 0) writes its weights,
training log and test NDCG@10 to OUT (.npz)."""

import json
import os
import sys

import numpy as np
import torch

from recforge.data.loaders import load_movielens_100k
from recforge.data.splits import per_user_split
from recforge.evaluation.protocols import FullRankingEvaluator
from recforge.models import create_model
from recforge.models.config import TrainOptions
from recforge.nn.checkpoint import Checkpointer

PARAMS = {
    "sasrec": {"dim": 32, "n_blocks": 1, "dropout": 0.0, "n_epochs": 4, "batch_size": 128, "max_len": 30},
    "two_tower": {"preset": "retrieval", "n_epochs": 8, "history_dim": 200},
}


SAVED_EPOCHS: list[int] = []  # epochs this process trained and checkpointed (a resumed run skips the rest)


def _note_saves() -> None:
    save = Checkpointer.save

    def save_and_note(self, epoch, state):
        SAVED_EPOCHS.append(epoch)
        save(self, epoch, state)

    Checkpointer.save = save_and_note


def train(name: str, checkpoint_dir: str | None = None):
    """(fitted model, NDCG@10 on the per-user 80/20 test split, full ranking)."""
    torch.set_num_threads(1)
    if checkpoint_dir is not None:
        _note_saves()
    data = load_movielens_100k(os.path.join(os.environ["RECFORGE_DATA_DIR"], "ml-100k"), features=name != "sasrec")
    split = per_user_split(data, 0.2, seed=0)
    model = create_model(name, **PARAMS[name]).fit(split.train, TrainOptions(seed=0, checkpoint_dir=checkpoint_dir))
    result = FullRankingEvaluator(split.train, split.test, ks=(10,)).evaluate(model)
    return model, float(result.summary["ndcg@10"])


def weights(model) -> dict[str, np.ndarray]:
    net = model.net_ if hasattr(model, "net_") else model.towers_
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


if __name__ == "__main__":
    name, out = sys.argv[1], sys.argv[2]
    model, ndcg = train(name, sys.argv[3] if len(sys.argv) > 3 else None)
    if int(os.environ.get("RANK", "0")) == 0:
        arrays = weights(model)
        arrays["__ndcg__"] = np.array(ndcg)
        arrays["__saved_epochs__"] = np.array(SAVED_EPOCHS, dtype=np.int64)
        arrays["__log__"] = np.frombuffer(json.dumps(model.training_log_).encode(), dtype=np.uint8)
        np.savez(out, **arrays)
