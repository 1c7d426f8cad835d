"""Sequential recommenders: the next item from a user's time-ordered history.

- `sasrec`: causal self-attention with learned positions; full-softmax cross-entropy over all items by
  default (`loss="bce"`: one sampled negative per position, as in the original paper).
- `gru4rec`: a GRU over item embeddings, cross-entropy over all items (padded batches).
- `lstm_next`: the beauty study's Model I — item embedding 128 -> LSTM 256 -> Dropout 0.3 -> LSTM 256 ->
  Dropout 0.3 -> softmax over all items, sparse categorical cross-entropy.
- `text_regression`: the beauty study's Model II — frozen sentence embeddings of item titles -> GRU 312 ->
  LSTM 312 -> GRU 312 with Dropout 0.3 -> linear map into the text-embedding space; recommendations are
  the items most similar (cosine) to the predicted vector. Trained contrastively by default (a softmax
  over the catalogue's cosines plus an item bias); `objective="mse"` is the study's regression onto the
  next title's embedding, which regresses to the mean title and cannot rank (see the class).

Training: each user's sequence (oldest first) is cut into windows of `max_len + 1` items from the end,
left-padded; the loss is taken at every real position (equivalent to training on every prefix).
Scoring: the last `max_len` items of the user's training sequence (known users) or of a query-time
history; seen items are excluded by `recommend`. Validation (when given) is next-item NDCG@10 on the
validation items with early stopping.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from recforge.coldstart import HISTORY, KNOWN_USERS
from recforge.data.interactions import Interactions, Sequences
from recforge.data.query import History
from recforge.errors import ConfigError
from recforge.models.base import Recommender
from recforge.models.config import ModelConfig, TrainOptions
from recforge.nn.checkpoint import Checkpointer
from recforge.nn.sequence import RecurrentEncoder, SASRecEncoder
from recforge.nn.softmax import catalogue_cross_entropy
from recforge.nn.training import EpochContext, EpochPlan, fit_epochs, make_optimizer, make_schedule, seed_everything


class SequenceConfig(ModelConfig):
    max_len: int = Field(50, ge=2, description="items of history the model reads")
    dim: int = Field(64, ge=1, description="item embedding size")
    dropout: float = Field(0.2, ge=0, lt=1)
    loss: Literal["ce", "bce"] = "ce"
    optimizer: Literal["adam", "adamw", "nadam", "adagrad", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="per-epoch learning rate: constant, or decayed to zero at the last epoch"
    )
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    n_epochs: int = Field(50, ge=1)
    min_steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps to take at least: where n_epochs gives fewer (a file with few users), the "
        "epochs are raised to ceil(min_steps / batches per epoch), so a recipe's budget carries across file sizes",
    )
    early_stopping_patience: int | None = Field(5, ge=1, description="evaluations without gain (needs valid data)")
    eval_every: int = Field(1, ge=1, description="epochs between validation evaluations")


class SASRecConfig(SequenceConfig):
    max_len: int = 50
    n_blocks: int = Field(2, ge=1)
    n_heads: int = Field(1, ge=1)
    item_features: str | None = Field(
        None,
        description="a list column of the item features (e.g. `attributes`: brand and category ids of the "
        "Amazon sequence files) whose values' embeddings, averaged, are added to each item's embedding",
    )


class GRU4RecConfig(SequenceConfig):
    hidden: int = Field(100, ge=1)
    dropout: float = 0.25


class LSTMNextConfig(SequenceConfig):
    dim: int = 128
    hidden: int = Field(256, ge=1)
    dropout: float = 0.3
    max_len: int = 20


class TextRegressionConfig(SequenceConfig):
    hidden: int = Field(312, ge=1)
    dropout: float = 0.3
    max_len: int = 20
    text_model: str = "all-MiniLM-L6-v2"
    text_column: str = "title"
    objective: Literal["contrastive", "mse"] = Field(
        "contrastive",
        description="contrastive: softmax over the catalogue of cos(predicted, item text)/temperature + item bias, "
        "items' text vectors through a learned map; mse: the study's regression onto the next title's vector",
    )
    temperature: float = Field(0.05, gt=0, description="contrastive: the cosine similarities' temperature")
    loss: Literal["ce", "bce"] = Field("ce", description="unused: `objective` chooses the loss")


class SequenceModel(Recommender):
    """Shared training, windows, scoring and state; subclasses build the encoder and its output."""

    capabilities = frozenset({KNOWN_USERS, HISTORY})
    Config = SequenceConfig

    # ------------------------------------------------------------------ to implement
    def _build(self, train: Interactions) -> torch.nn.Module:
        raise NotImplementedError

    def _logits(self, states: torch.Tensor) -> torch.Tensor:
        """(P, d) states -> (P, n_items) scores."""
        raise NotImplementedError

    def _loss(self, states: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c: SequenceConfig = self.config  # type: ignore[assignment]
        output, bias = self._output()
        if c.loss == "ce":  # = cross_entropy(self._logits(states), targets), without the (P, n_items) logits
            return catalogue_cross_entropy(states, output, bias, targets)
        negatives = torch.randint(0, len(output), targets.shape, generator=generator)
        positive = (states * output[targets]).sum(1) + bias[targets]
        negative = (states * output[negatives]).sum(1) + bias[negatives]
        return -(torch.nn.functional.logsigmoid(positive) + torch.nn.functional.logsigmoid(-negative)).mean()

    def _output(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: SequenceConfig = self.config  # type: ignore[assignment]
        seed_everything(options.seed)  # the network's initialisation
        self.sequences_ = train.sequences()
        self.net_ = self._build(train)
        windows = torch.from_numpy(training_windows(self.sequences_, c.max_len))
        if len(windows) == 0:
            raise ConfigError(f"{self.name}: no user has two or more interactions to learn a next item from")
        valid = self._validation_targets(options.valid)
        n_epochs = epochs_for(c, len(windows))
        plan = EpochPlan(
            n_epochs=n_epochs,
            monitor="valid_ndcg@10" if valid is not None else None,
            patience=c.early_stopping_patience,
            eval_every=c.eval_every,
            description=self.name,
        )
        trainer = _SequenceTrainer(self, windows, valid, n_epochs)
        self.training_log_ = fit_epochs(trainer, plan, options, Checkpointer.for_fit(self, train, options))
        self.net_.eval()

    def _validation_targets(self, valid: Interactions | None) -> tuple[np.ndarray, np.ndarray] | None:
        if valid is None or len(valid) == 0:
            return None
        rows = valid.latest_per_pair()
        users, items = valid.user_index[rows].astype(np.int64), valid.item_index[rows].astype(np.int64)
        last = np.unique(users, return_index=True)[1]  # one target per user (their earliest validation row)
        keep = self.known_users_[users[last]]
        return users[last][keep], items[last][keep]

    @torch.no_grad()
    def _validate(self, users: np.ndarray, items: np.ndarray, batch: int = 2048) -> float:
        """Mean next-item NDCG@10 over validation users (full ranking, training items excluded)."""
        from recforge.evaluation.metrics import ndcg_from_ranks

        self.net_.eval()
        ranks = []
        for start in range(0, len(users), batch):
            block_users, block_items = users[start : start + batch], items[start : start + batch]
            scores = torch.from_numpy(self._score_known(block_users))
            seen = self.seen_[block_users].tocoo()
            scores[seen.row, seen.col] = -torch.inf
            target = scores[torch.arange(len(block_users)), torch.from_numpy(block_items)]
            ranks.append((scores > target[:, None]).sum(1).numpy())
        return float(ndcg_from_ranks(np.concatenate(ranks), 10).mean())

    # ------------------------------------------------------------------ scoring
    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._score_sequences(self.sequences_, np.asarray(users, np.int64))

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._score_sequences(history.sequences, np.arange(len(history)))

    @property
    def keeps_time_order(self) -> bool:
        return True

    def training_history(self, user: int) -> History:
        """The user's training sequence, in time order (what an update appends to)."""
        return History.from_items([self.sequences_[user].tolist()], self.n_items)

    @torch.no_grad()
    def _score_sequences(self, sequences: Sequences, rows: np.ndarray, batch: int = 1024) -> np.ndarray:
        self.net_.eval()
        out = np.empty((len(rows), len(self.items_)), np.float32)
        for start in range(0, len(rows), batch):
            block = trim_padding(
                torch.from_numpy(last_items(sequences, rows[start : start + batch], self.config.max_len))
            )
            states = self.net_(block)[:, -1]
            out[start : start + batch] = self._logits(states).numpy()
        return out

    # ------------------------------------------------------------------ state
    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"net/{k}": v.detach().numpy() for k, v in self.net_.state_dict().items()}
        return arrays | {"sequences/indptr": self.sequences_.indptr, "sequences/items": self.sequences_.items}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        indptr, items = arrays["sequences/indptr"], arrays["sequences/items"]
        self.sequences_ = Sequences(indptr=indptr, items=items, rows=np.arange(len(items)))
        self.net_ = self._build_for(len(self.items_), arrays)
        self.net_.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("net/")})
        self.net_.eval()

    def _build_for(self, n_items: int, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
        return self._make_net(n_items)

    def _make_net(self, n_items: int) -> torch.nn.Module:
        raise NotImplementedError


class _Head(torch.nn.Module):
    """Encoder + output layer, saved and restored as one module."""

    def __init__(self, encoder: torch.nn.Module, output: torch.nn.Module | None) -> None:
        super().__init__()
        self.encoder, self.output = encoder, output

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return self.encoder(sequence)


class SASRec(SequenceModel):
    name = "sasrec"
    Config = SASRecConfig

    def _build(self, train: Interactions) -> torch.nn.Module:
        c: SASRecConfig = self.config  # type: ignore[assignment]
        if c.item_features is None:
            return self._make_net(train.n_items)
        from recforge.data.features import item_value_lists, value_bags

        lists, vocabulary = item_value_lists(train, c.item_features, self.name)
        values, offsets = value_bags(lists, vocabulary)
        bags = (torch.from_numpy(values), torch.from_numpy(offsets), len(vocabulary))
        return self._make_net(train.n_items, bags)

    def _build_for(self, n_items: int, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
        if "net/encoder.feature_values" not in arrays:
            return self._make_net(n_items)
        values, offsets = arrays["net/encoder.feature_values"], arrays["net/encoder.feature_offsets"]
        n_values = arrays["net/encoder.features.weight"].shape[0]
        return self._make_net(n_items, (torch.from_numpy(values), torch.from_numpy(offsets), n_values))

    def _make_net(
        self, n_items: int, feature_bags: tuple[torch.Tensor, torch.Tensor, int] | None = None
    ) -> torch.nn.Module:
        c: SASRecConfig = self.config  # type: ignore[assignment]
        encoder = SASRecEncoder(n_items, c.dim, c.max_len, c.n_blocks, c.n_heads, c.dropout, feature_bags)
        head = _Head(encoder, None)
        head.bias = torch.nn.Parameter(torch.zeros(n_items))
        return head

    def _output(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net_.encoder.output_embeddings(), self.net_.bias

    def _logits(self, states: torch.Tensor) -> torch.Tensor:
        output, bias = self._output()
        return states @ output.T + bias


class _RecurrentModel(SequenceModel):
    def _layers(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def _build(self, train: Interactions) -> torch.nn.Module:
        return self._make_net(train.n_items)

    def _make_net(self, n_items: int) -> torch.nn.Module:
        c = self.config
        encoder = RecurrentEncoder(n_items, c.dim, self._layers(), c.dropout)
        return _Head(encoder, torch.nn.Linear(encoder.out_dim, n_items))

    def _output(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net_.output.weight, self.net_.output.bias

    def _logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.net_.output(states)


class GRU4Rec(_RecurrentModel):
    name = "gru4rec"
    Config = GRU4RecConfig

    def _layers(self) -> list[tuple[str, int]]:
        return [("gru", self.config.hidden)]


class LSTMNext(_RecurrentModel):
    """The beauty study's Model I."""

    name = "lstm_next"
    Config = LSTMNextConfig

    def _layers(self) -> list[tuple[str, int]]:
        return [("lstm", self.config.hidden), ("lstm", self.config.hidden)]


class TextRegression(SequenceModel):
    """The beauty study's Model II: frozen title embeddings in, a vector in the title-embedding space out,
    recommendations by similarity to the catalogue's titles.

    `objective="mse"` is the study's training as published: mean squared error to the next item's title
    vector. It cannot rank: MSE's optimum is the mean of the possible next titles' vectors, a point near
    the centre of the title space, whose nearest titles are generic ones rather than the likely next items
    (0.008 NDCG@10 on ML-100K leave-last-out, a sixth of popularity). The default, `"contrastive"`, keeps
    the design (frozen text in, text-space vector out, decoding by cosine over the catalogue) and trains
    what decoding uses: a softmax over every item of cos(predicted, item)/temperature plus a learned item
    bias (which carries popularity), where an item's vector is its title embedding through a learned
    linear map initialised to the identity. No item ids are learned apart from the bias, so an item the
    model never saw is scored from its title alone (bias 0)."""

    name = "text_regression"
    Config = TextRegressionConfig

    def _build(self, train: Interactions) -> torch.nn.Module:
        from recforge.data.text import embed_texts

        c: TextRegressionConfig = self.config  # type: ignore[assignment]
        if train.item_features is None or c.text_column not in train.item_features:
            raise ConfigError(f"text_regression needs item titles: an item-feature column {c.text_column!r}")
        texts = train.item_features[c.text_column].astype("string").fillna("").tolist()
        self.text_ = torch.from_numpy(embed_texts(texts, c.text_model))
        return self._make_net_from(self.text_)

    def _make_net_from(self, text: torch.Tensor) -> torch.nn.Module:
        c: TextRegressionConfig = self.config  # type: ignore[assignment]
        encoder = RecurrentEncoder(
            len(text), 0, [("gru", c.hidden), ("lstm", c.hidden), ("gru", c.hidden)], c.dropout, frozen_inputs=text
        )
        head = _Head(encoder, torch.nn.Linear(c.hidden, text.shape[1]))
        if c.objective == "contrastive":
            head.item_map = torch.nn.Linear(text.shape[1], text.shape[1], bias=False)
            torch.nn.init.eye_(head.item_map.weight)
            head.bias = torch.nn.Parameter(torch.zeros(len(text)))
        return head

    def _build_for(self, n_items: int, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
        self.text_ = torch.from_numpy(arrays["net/encoder.item.weight"][1:].copy())
        return self._make_net_from(self.text_)

    def _loss(self, states: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.config.objective == "mse":  # type: ignore[attr-defined]
            return torch.nn.functional.mse_loss(self.net_.output(states), self.text_[targets])
        return torch.nn.functional.cross_entropy(self._logits(states), targets)

    def _logits(self, states: torch.Tensor) -> torch.Tensor:
        predicted = torch.nn.functional.normalize(self.net_.output(states), dim=1)
        if self.config.objective == "mse":  # type: ignore[attr-defined]
            return predicted @ torch.nn.functional.normalize(self.text_, dim=1).T
        items = torch.nn.functional.normalize(self.net_.item_map(self.text_), dim=1)
        return predicted @ items.T / self.config.temperature + self.net_.bias  # type: ignore[attr-defined]


class _SequenceTrainer:
    """One epoch = every training window once, in length buckets (so little padding is computed), the loss
    at every real position; validation = next-item NDCG@10."""

    def __init__(
        self, model: SequenceModel, windows: torch.Tensor, valid: tuple[np.ndarray, np.ndarray] | None, n_epochs: int
    ):
        c = model.config
        self.model, self.windows, self.valid = model, windows, valid
        self.lengths = (windows > 0).sum(1)
        self.parameters = [p for p in model.net_.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(c.optimizer, self.parameters, c.lr, c.weight_decay)
        self.scheduler = make_schedule(self.optimizer, c.lr_schedule, n_epochs)
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> None:
        self.device = device
        self.model.net_.to(device)

    def train_epoch(self, context: EpochContext) -> dict[str, float]:
        model, parallel = self.model, context.parallel
        model.net_.train()
        total, count = 0.0, 0
        for index in length_buckets(self.lengths, model.config.batch_size, context.generator):
            batch = trim_padding(self.windows[index])  # trimmed as one global batch on every rank
            all_targets = (batch[:, :-1] > 0) & (batch[:, 1:] > 0)
            rows = parallel.local_rows(len(batch))
            inputs, targets, mask = (t.to(self.device) for t in (batch[rows, :-1], batch[rows, 1:], all_targets[rows]))
            states = model.net_(inputs)[mask]
            loss = model._loss(states, targets[mask] - 1, context.generator)
            scale = parallel.loss_scale(int(mask.sum()), int(all_targets.sum()), len(batch))
            self.optimizer.zero_grad()
            (loss * scale).backward()
            parallel.sync_gradients(self.parameters)
            self.optimizer.step()
            total += float(loss.detach()) * int(mask.sum())
            count += int(mask.sum())
        self.scheduler.step()
        return {"loss": total / max(count, 1)}

    def validate(self) -> dict[str, float]:
        if self.valid is None:
            return {}
        self.model.net_.to("cpu")  # scoring runs on the CPU, as after training
        value = self.model._validate(*self.valid)
        self.model.net_.to(self.device)
        return {"valid_ndcg@10": value}

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.model.net_.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.net_.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # checkpoints written before schedules existed ran at a constant rate
            self.scheduler.load_state_dict(state["scheduler"])

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.net_.state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.net_.load_state_dict(weights)


def epochs_for(config: SequenceConfig, n_windows: int) -> int:
    """The epochs a fit runs: `n_epochs`, raised where they would take fewer than `min_steps` optimizer
    steps (one step per batch of `batch_size` windows)."""
    if config.min_steps is None:
        return config.n_epochs
    batches = -(-n_windows // config.batch_size)
    return max(config.n_epochs, -(-config.min_steps // max(batches, 1)))


def training_windows(sequences: Sequences, max_len: int) -> np.ndarray:
    """(n_windows, max_len + 1) item ids + 1 (0 = padding): each user's sequence cut from its end into
    windows of max_len + 1 items (consecutive windows share one item, so every transition is trained
    once), left-padded; windows with fewer than two items are dropped."""
    lengths = sequences.lengths
    users = np.flatnonzero(lengths >= 2)
    per_user = np.maximum(1, -(-(lengths[users] - 1) // max_len))
    owner = np.repeat(users, per_user)
    step = np.arange(len(owner)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    ends = lengths[owner] - step * max_len  # exclusive end of each window within the user's sequence
    positions = ends[:, None] - (max_len + 1) + np.arange(max_len + 1)[None, :]
    valid = positions >= 0
    flat = sequences.indptr[owner][:, None] + np.maximum(positions, 0)
    return np.where(valid, sequences.items[flat] + 1, 0).astype(np.int64)


def length_buckets(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Batches of window indices with similar lengths (random order within equal lengths, batches
    shuffled), so each batch can drop the padding columns it does not need."""
    noise = torch.rand(len(lengths), generator=generator)
    order = torch.from_numpy(np.lexsort((noise.numpy(), lengths.numpy())))
    batches = list(torch.split(order, batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def trim_padding(batch: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are padding in every row (sequences are left-padded)."""
    used = (batch > 0).any(0)
    first = int(used.float().argmax()) if bool(used.any()) else batch.shape[1] - 1
    return batch[:, first:]


def last_items(sequences: Sequences, rows: np.ndarray, max_len: int) -> np.ndarray:
    """(len(rows), max_len) the last max_len items (+1) of each row's sequence, left-padded with 0."""
    ends = sequences.indptr[rows + 1]
    starts = sequences.indptr[rows]
    positions = ends[:, None] - max_len + np.arange(max_len)[None, :]
    valid = positions >= starts[:, None]
    items = (
        sequences.items[np.clip(positions, 0, max(len(sequences.items) - 1, 0))]
        if len(sequences.items)
        else np.zeros(positions.shape, np.int64)
    )
    return np.where(valid, items + 1, 0).astype(np.int64)
