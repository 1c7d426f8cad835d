"""The thread policy: explicit counts win, counts set for a fit are restored after it, and a machine whose
cores are all busy gets one thread."""

from __future__ import annotations

import multiprocessing
import time

import numba
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from recforge import threads
from recforge.models import create_model
from recforge.models.config import TrainOptions


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.fixture
def no_thread_settings(monkeypatch):
    for variable in (threads.THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(threads, "_cached", None)


def test_explicit_counts_win_in_order(monkeypatch, no_thread_settings):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads() == 3
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.choose_threads() == 2
    assert threads.choose_threads(5) == 5  # TrainOptions(threads=5) beats both
    assert threads.choose_threads(useful=1) == 2  # a model's cap applies only to automatic choices
    with pytest.raises(ValueError, match="at least 1"):
        threads.choose_threads(0)


def test_threads_set_for_a_fit_are_restored_afterwards(small):
    create_model("ials", n_factors=4, n_iterations=2).fit(small)  # loads every BLAS pool a fit uses (scipy.linalg)
    before_torch, before_blas, before_numba = torch.get_num_threads(), _blas_threads(), numba.get_num_threads()
    target = 1 if before_torch != 1 else 2
    with threads.thread_limit(target) as used:
        assert used == target
        assert torch.get_num_threads() == target
        assert all(count == target for count in _blas_threads())
        assert numba.get_num_threads() == min(target, numba.config.NUMBA_NUM_THREADS)
    assert torch.get_num_threads() == before_torch and _blas_threads() == before_blas
    assert numba.get_num_threads() == before_numba
    model = create_model("ials", n_factors=4, n_iterations=2).fit(small, TrainOptions(threads=target))
    assert model.fit_threads_ == target
    assert torch.get_num_threads() == before_torch and _blas_threads() == before_blas
    create_model("ials", n_factors=4, n_iterations=2).fit(small)  # threads=None afterwards: not the old count
    assert torch.get_num_threads() == before_torch


def test_restored_even_when_the_fit_fails(small):
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError), threads.thread_limit(target):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_mf_sgd_uses_one_thread_unless_told(small, no_thread_settings):
    assert create_model("mf", n_epochs=1).fit(small).fit_threads_ == 1
    assert create_model("mf", n_epochs=1, batch_size=None).max_threads(small) is None
    assert create_model("mf", n_epochs=1).fit(small, TrainOptions(threads=2)).fit_threads_ == 2


def _burn(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


@pytest.mark.skipif(not threads.Path("/proc/stat").exists(), reason="samples /proc/stat (Linux)")
def test_a_machine_with_every_core_busy_gets_one_thread(no_thread_settings):
    burners = [multiprocessing.Process(target=_burn, args=(20.0,)) for _ in range(threads.usable_cores())]
    for burner in burners:
        burner.start()
    try:
        time.sleep(0.5)
        busy = threads.busy_elsewhere(0.2)
        assert busy is not None and busy >= threads.usable_cores() - 0.5
        assert threads.choose_threads() == 1
    finally:
        for burner in burners:
            burner.terminate()
            burner.join()


def test_openmp_spin_default_is_set_but_never_overrides_the_user(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    threads.quiet_openmp_spinning()
    assert threads.os.environ["GOMP_SPINCOUNT"] == threads.SPIN_COUNT
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    threads.quiet_openmp_spinning()
    assert threads.os.environ["GOMP_SPINCOUNT"] == "123"
    assert np.isfinite(threads.free_cores())
