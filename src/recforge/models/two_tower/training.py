"""Training the two towers: the `EpochTrainer` the shared loop runs, and the `TowerScorer` the task asks
for vectors. Batching follows the task: (user, item) pairs, or whole users (multinomial)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recforge.models.two_tower.config import TwoTowerConfig
from recforge.models.two_tower.features import TowerFeatures
from recforge.models.two_tower.network import TowerNetwork
from recforge.nn.tasks import Embeddings, PairBatch, Task, UserBatch
from recforge.nn.training import EpochContext, make_optimizer, make_schedule


def torch_csr(matrix: Any) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = matrix.tocsr()
    return torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64))


class TowerTrainer:
    def __init__(
        self,
        config: TwoTowerConfig,
        network: TowerNetwork,
        features: TowerFeatures,
        task: Task,
        seen: sp.csr_matrix,
        rows: tuple[np.ndarray, np.ndarray, np.ndarray | None],
        mean: float,
        valid: dict[str, np.ndarray] | None,
    ) -> None:
        self.config, self.network, self.features, self.task = config, network, features, task
        self.n_users, self.n_items = seen.shape
        self.seen_matrix = seen
        users, items, targets = rows
        self.users, self.items = torch.from_numpy(users), torch.from_numpy(items)
        self.targets = None if targets is None else torch.from_numpy(targets.astype(np.float32))
        positives = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=seen.shape)
        self.positives, self.seen = torch_csr(positives), torch_csr(seen)
        self.user_features, self.item_features = features.user_tensors, features.item_tensors
        self.mean, self.valid = mean, valid
        self.parameters = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config.optimizer, network.parameters(), config.lr, config.weight_decay)
        self.scheduler = make_schedule(self.optimizer, config.lr_schedule, config.n_epochs)
        self.device = torch.device("cpu")
        self.generator: torch.Generator | None = None

    # ------------------------------------------------------------------ EpochTrainer
    def to(self, device: torch.device) -> None:
        self.device = device
        self.network.to(device)
        move = lambda tensors: {k: v.to(device) for k, v in tensors.items()}  # noqa: E731
        self.user_features, self.item_features = move(self.features.user_tensors), move(self.features.item_tensors)
        self.positives = tuple(t.to(device) for t in self.positives)  # type: ignore[assignment]
        self.seen = tuple(t.to(device) for t in self.seen)  # type: ignore[assignment]

    def train_epoch(self, context: EpochContext) -> dict[str, float]:
        c, parallel = self.config, context.parallel
        self.generator = context.generator
        self.network.train()
        by_user = self.task.batching == "users"
        order = torch.randperm(self.n_users if by_user else len(self.users), generator=context.generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), c.batch_size):
            global_index = order[start : start + c.batch_size]
            if not by_user and len(global_index) < 2:
                continue
            index = global_index[parallel.local_rows(len(global_index))]
            batch = self._user_batch(index) if by_user else self._pair_batch(index)
            loss = None if batch is None else self.task.loss(batch, self, context.generator)
            if loss is None and not parallel.enabled:
                continue
            self.optimizer.zero_grad()
            if loss is not None:
                (loss * parallel.loss_scale(len(index), len(global_index), len(global_index))).backward()
                total += float(loss.detach())
                batches += 1
            parallel.sync_gradients(self.parameters)  # every rank, even one without a loss this step
            self.optimizer.step()
        self.scheduler.step()
        return {"loss": total / max(1, batches)}

    def _pair_batch(self, index: torch.Tensor) -> PairBatch:
        targets = None if self.targets is None else self.targets[index].to(self.device)
        return PairBatch(self.users[index].to(self.device), self.items[index].to(self.device), targets)

    def _user_batch(self, users: torch.Tensor) -> UserBatch | None:
        users = users.to(self.device)
        indptr = self.positives[0]
        users = users[(indptr[users + 1] - indptr[users]) > 0]
        return UserBatch(users, self.positives) if len(users) else None

    def validate(self) -> dict[str, float]:
        if self.valid is None:
            return {}
        embeddings = self.embeddings()
        exclude = None
        if self.task.name != "rating" and self.config.validation_exclude_seen:
            exclude = torch.from_numpy(self.seen_matrix[self.valid["users"]].toarray() > 0)
        return self.task.validate(embeddings, self.valid, exclude)

    def embeddings(self) -> Embeddings:
        """Evaluation-mode vectors of every known user and item (on the CPU), the mean added to user bias."""
        found = self.network.embed_all(self.user_features, self.item_features, self.seen)
        cpu = lambda t: t.detach().to("cpu")  # noqa: E731
        return Embeddings(cpu(found.users), cpu(found.items), cpu(found.user_bias) + self.mean, cpu(found.item_bias))

    def state_dict(self) -> dict[str, Any]:
        return {
            "towers": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["towers"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def weights(self) -> dict[str, torch.Tensor]:
        return self.network.state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict(weights)

    # ------------------------------------------------------------------ TowerScorer
    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        return self.network.users(
            users, users, self.user_features, self.seen, exclude, c.id_dropout, c.history_dropout, self.generator
        )

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.network.items(items, self.item_features, self.config.id_dropout, self.generator)

    def all_item_vectors(self) -> torch.Tensor:
        return self.network.items(torch.arange(self.n_items, device=self.device), self.item_features)

    def item_bias(self) -> torch.Tensor | None:
        return None if self.network.item_bias is None else self.network.item_bias[: self.n_items]

    def rating(
        self, user_vectors: torch.Tensor, item_vectors: torch.Tensor, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        predictions = (user_vectors * item_vectors).sum(1)
        if self.config.biases:
            predictions = predictions + self.mean + self.network.user_bias[users] + self.network.item_bias[items]
        if self.config.score_activation == "relu":
            predictions = torch.relu(predictions)
        return predictions
