"""Leakage guards: conditions under which an evaluation would be dishonest, refused with `LeakageError`.

Checked before any number is computed:
- a test (or validation) (user, item) pair also present in training;
- a temporal split whose training part contains interactions at or after the test cut-off, or a
  leave-last-out split where a user's training interaction is later than their test interaction;
- a model, scaler, feature builder or vocabulary fitted on data other than the training part.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recforge.data.interactions import Interactions
from recforge.data.splits import Split
from recforge.errors import LeakageError


def check_split(split: Split, *, allow_repeat_pairs: bool = False) -> None:
    """Raise if a held-out pair is also in training or if the split lets the future into training.

    `allow_repeat_pairs` permits the same (user, item) in train and test, which is legitimate only
    for re-consumption data (e.g. music plays) and never for ratings.
    """
    for part in ("test", "valid"):
        if getattr(split, f"{part}_rows") is None or not len(getattr(split, f"{part}_rows")):
            continue
        overlap = split.pairs_in_train(part)
        if overlap.any() and not allow_repeat_pairs:
            other = getattr(split, part)
            row = int(np.flatnonzero(overlap)[0])
            user = split.data.users.id(other.user_index[row])
            item = split.data.items.id(other.item_index[row])
            raise LeakageError(
                f"split {split.name!r}: {int(overlap.sum())} {part} (user, item) pair(s) also appear in training, "
                f"e.g. user {user!r} with item {item!r}; de-duplicate the data or fix the split, or, if repeats "
                "are genuine re-consumption (plays, purchases), allow them with `allow_repeat_pairs = true` under "
                "[evaluation] (check_split(..., allow_repeat_pairs=True))"
            )
    kind = split.params.get("kind")
    data = split.data
    temporal = kind == "temporal" and data.timestamp is not None and len(split.train_rows) and len(split.test_rows)
    if temporal and split.train.timestamp.max() >= split.test.timestamp.min():
        raise LeakageError(f"split {split.name!r}: training contains interactions from the test period")
    if kind == "leave_last_out" and data.timestamp is not None and len(split.test_rows):
        last_train = np.full(data.n_users, np.iinfo(np.int64).min)
        np.maximum.at(last_train, split.train.user_index, split.train.timestamp)
        first_test = np.full(data.n_users, np.iinfo(np.int64).max)
        np.minimum.at(first_test, split.test.user_index, split.test.timestamp)
        if (last_train > first_test).any():
            raise LeakageError(f"split {split.name!r}: a user's training interaction is later than their test one")


def check_fitted_on(component: Any, train: Interactions, what: str | None = None) -> None:
    """Raise unless `component.fitted_on_` is the fingerprint of `train` (models, scalers, feature builders)."""
    fitted_on = getattr(component, "fitted_on_", None)
    label = what or getattr(component, "name", type(component).__name__)
    if fitted_on is None:
        raise LeakageError(f"{label} records no training fingerprint; cannot prove it was fitted on training data")
    if fitted_on != train.fingerprint():
        raise LeakageError(
            f"{label} was fitted on data other than this split's training part (fingerprint {fitted_on[:12]}… vs "
            f"{train.fingerprint()[:12]}…); fitting on test data would inflate every metric"
        )
