"""Splits as typed configs: one pydantic model per kind, told apart by `kind`, each with `make(data, seed)`.

Experiment configs (`[split]`) validate against `SplitSpec` when they are loaded, so a misspelt kind or
parameter fails before any data is read, naming it. `validation` is an optional carve-out of the
training part (another spec) for hyper-parameter search.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from recforge.data.interactions import Interactions
from recforge.data.splits import (
    Split,
    kfold_split,
    leave_last_out,
    per_user_split,
    random_split,
    stratified_split,
    temporal_split,
    user_disjoint_split,
)
from recforge.errors import ConfigError

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class _SplitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    validation: SplitSpec | None = Field(None, description="carve-out of the training part for tuning")

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        raise NotImplementedError  # pragma: no cover - every kind implements it

    def make_all(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> list[Split]:
        """Every split one seed gives: one, or k for k-fold cross-validation."""
        return [self.make(data, seed, dataset_path)]

    @property
    def params(self) -> dict:
        return self.model_dump(exclude={"kind", "validation"})


class RandomSplitSpec(_SplitSpec):
    """Rows at random: `test_fraction` (and `valid_fraction`) of all interactions."""

    kind: Literal["random"] = "random"
    test_fraction: Fraction = 0.2
    valid_fraction: Fraction = 0.0

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        return random_split(data, self.test_fraction, self.valid_fraction, seed=seed)


class StratifiedSplitSpec(_SplitSpec):
    """Rows at random within each rating value."""

    kind: Literal["stratified"] = "stratified"
    test_fraction: Fraction = 0.2
    valid_fraction: Fraction = 0.0

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        return stratified_split(data, self.test_fraction, self.valid_fraction, seed=seed)


class PerUserSplitSpec(_SplitSpec):
    """Each user's rows at random, keeping at least `min_train` in training."""

    kind: Literal["per_user"] = "per_user"
    test_fraction: Fraction = 0.2
    valid_fraction: Fraction = 0.0
    min_train: int = Field(1, ge=0)

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        return per_user_split(data, self.test_fraction, self.valid_fraction, seed=seed, min_train=self.min_train)


class UserDisjointSplitSpec(_SplitSpec):
    """Whole users held out; each one's earliest `fold_in_fraction` is given at query time (fold_in)."""

    kind: Literal["user_disjoint"] = "user_disjoint"
    test_user_fraction: Fraction = 0.2
    fold_in_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    by_time: bool = True

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        return user_disjoint_split(
            data, self.test_user_fraction, self.fold_in_fraction, seed=seed, by_time=self.by_time
        )


class TemporalSplitSpec(_SplitSpec):
    """Everything after a global time cut-off is held out (no seed: the cut is deterministic)."""

    kind: Literal["temporal"] = "temporal"
    test_fraction: Fraction = 0.2
    valid_fraction: Fraction = 0.0
    cutoff: int | None = None

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        return temporal_split(data, self.test_fraction, self.valid_fraction, self.cutoff)


class LeaveLastOutSpec(_SplitSpec):
    """Each user's last `k` items are test, the `valid_k` before them validation (the next-item protocol)."""

    kind: Literal["leave_last_out"] = "leave_last_out"
    k: int = Field(1, ge=1)
    valid_k: int = Field(0, ge=0)

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        return leave_last_out(data, self.k, self.valid_k)


class KFoldSpec(_SplitSpec):
    """k-fold cross-validation: every fold is the test part once; reports give each model's mean ± 95% CI
    over the folds (and seeds). `make` gives the first fold."""

    kind: Literal["kfold"] = "kfold"
    n_folds: int = Field(5, ge=2, le=100)
    per_user: bool = False

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        return kfold_split(data, self.n_folds, 0, seed=seed, per_user=self.per_user)

    def make_all(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> list[Split]:
        return [kfold_split(data, self.n_folds, f, seed=seed, per_user=self.per_user) for f in range(self.n_folds)]


class ML100KFoldSpec(_SplitSpec):
    """One of the folds GroupLens ships with MovieLens 100K (u1..u5, ua, ub); needs the unprocessed data."""

    kind: Literal["ml100k_fold"] = "ml100k_fold"
    fold: Literal["u1", "u2", "u3", "u4", "u5", "ua", "ub"] = "u1"

    def make(self, data: Interactions, seed: int = 0, dataset_path: str | None = None) -> Split:
        from recforge.data.loaders import load_movielens_100k_fold

        split = load_movielens_100k_fold(self.fold, dataset_path)
        if split.data.fingerprint() != data.fingerprint():
            raise ConfigError("split kind ml100k_fold needs the unprocessed ml-100k dataset")
        return split


SplitSpec = Annotated[
    RandomSplitSpec
    | StratifiedSplitSpec
    | PerUserSplitSpec
    | UserDisjointSplitSpec
    | TemporalSplitSpec
    | LeaveLastOutSpec
    | KFoldSpec
    | ML100KFoldSpec,
    Field(discriminator="kind"),
]
SPLIT_KINDS = (
    "random",
    "stratified",
    "per_user",
    "user_disjoint",
    "temporal",
    "leave_last_out",
    "kfold",
    "ml100k_fold",
)

for _spec in (
    RandomSplitSpec,
    StratifiedSplitSpec,
    PerUserSplitSpec,
    UserDisjointSplitSpec,
    TemporalSplitSpec,
    LeaveLastOutSpec,
    KFoldSpec,
    ML100KFoldSpec,
):
    _spec.model_rebuild()
