"""Shared fixtures. Real datasets come from RECFORGE_DATA_DIR (CI sets it; locally it defaults to
../shared/data next to the checkout). A missing dataset is an error, never a skip."""

from __future__ import annotations

import os

# Tests run in parallel workers (pytest-xdist, one per core); nested BLAS/torch thread pools would
# oversubscribe the machine, so each worker computes single-threaded.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data import Interactions, Vocabulary

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)


def _data_dir() -> Path:
    configured = os.environ.get("RECFORGE_DATA_DIR")
    path = Path(configured) if configured else REPO.parent / "shared" / "data"
    os.environ["RECFORGE_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _data_dir()
    if not path.is_dir():
        pytest.fail(f"real datasets not found at {path}; set RECFORGE_DATA_DIR", pytrace=False)
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path) -> Interactions:
    from recforge.data.loaders import load_movielens_100k

    return load_movielens_100k(data_dir / "ml-100k")


@pytest.fixture(scope="session")
def ml100k_rating_split(ml100k: Interactions):
    """Random 80/20 of all ratings, seed 0: the rating benchmarks' split."""
    from recforge.data.splits import random_split

    return random_split(ml100k, 0.2, seed=0)


@pytest.fixture(scope="session")
def ml100k_ranking_split(ml100k: Interactions):
    """Per-user 80/20, seed 0: the top-k benchmarks' split (full ranking, training items excluded)."""
    from recforge.data.splits import per_user_split

    return per_user_split(ml100k, 0.2, seed=0)


@pytest.fixture(scope="session")
def ml_latest(data_dir: Path) -> Interactions:
    from recforge.data.loaders import load_movielens_latest_small

    return load_movielens_latest_small(data_dir / "ml-latest-small")


@pytest.fixture(scope="session")
def anime(data_dir: Path) -> Interactions:
    from recforge.data.loaders import load_anime_kaggle

    return load_anime_kaggle(data_dir / "anime-kaggle")


@pytest.fixture(scope="session")
def beauty(data_dir: Path) -> Interactions:
    from recforge.data.loaders import load_amazon_sequences

    return load_amazon_sequences(data_dir / "amazon-beauty")


def make_interactions(
    n_users: int = 30,
    n_items: int = 40,
    n: int = 600,
    seed: int = 0,
    rated: bool = True,
    timestamps: bool = True,
    preference: bool = False,
) -> Interactions:
    """Synthetic interactions with a low-rank preference structure (so models have something to learn).

    Ratings follow the preference; which items a user picks follows popularity, or, with `preference`,
    popularity times exp(preference) without repeats, so that who-picked-what carries the structure too.
    """
    rng = np.random.default_rng(seed)
    user_vec = rng.normal(size=(n_users, 3))
    item_vec = rng.normal(size=(n_items, 3))
    popularity = rng.pareto(1.5, size=n_items) + 1
    if preference:
        weights = popularity[None, :] * np.exp(1.5 * user_vec @ item_vec.T)
        keys = -np.log(rng.random((n_users, n_items))) / weights  # weighted sampling without replacement
        per_user = max(1, n // n_users)
        items = np.argsort(keys, axis=1)[:, :per_user].ravel()
        users = np.repeat(np.arange(n_users), per_user)
        n = len(users)
    else:
        users = rng.integers(0, n_users, size=n)
        items = rng.choice(n_items, size=n, p=popularity / popularity.sum())
    score = (user_vec[users] * item_vec[items]).sum(axis=1)
    rating = np.clip(np.rint(3 + score), 1, 5).astype(np.float32) if rated else None
    frame = pd.DataFrame({"user_id": users + 1, "item_id": items + 101})
    return Interactions(
        users=Vocabulary(np.arange(1, n_users + 1), "user"),
        items=Vocabulary(np.arange(101, 101 + n_items), "item"),
        user_index=frame["user_id"].to_numpy() - 1,
        item_index=frame["item_id"].to_numpy() - 101,
        rating=rating,
        timestamp=rng.integers(0, 1000, size=n) if timestamps else None,
        rating_scale=(1.0, 5.0) if rated else None,
        name="synthetic",
    )


@pytest.fixture
def small() -> Interactions:
    return make_interactions()
