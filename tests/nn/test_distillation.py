"""Ranking distillation's loss against a hand computation: a softmax over the unseen items of the teacher's
per-user standardised scores, cross-entropy with the student's softmax over the same items."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.errors import ConfigError
from recforge.models import create_model
from recforge.nn.tasks import Distillation


def test_the_loss_equals_a_hand_computed_cross_entropy_over_unseen_items():
    teacher = np.array([[1.0, 2.0, 3.0, 6.0]], dtype=np.float32)  # mean 3, std (unbiased) sqrt(14/3)
    logits = torch.tensor([[0.5, 0.0, 1.0, 9.0]])
    seen = torch.tensor([[False, False, False, True]])
    distillation = Distillation(lambda users: teacher[users], weight=2.0, temperature=0.5)
    loss = distillation.loss(logits, torch.tensor([0]), seen)

    spread = math.sqrt(14 / 3)
    z = [(v - 3.0) / spread / 0.5 for v in (1.0, 2.0, 3.0)]
    target = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
    student = [0.5, 0.0, 1.0]
    log_norm = math.log(sum(math.exp(v) for v in student))
    expected = 2.0 * -sum(t * (s - log_norm) for t, s in zip(target, student, strict=True))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@settings(max_examples=50, deadline=None)
@given(items=st.integers(2, 30), users=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_the_loss_is_smallest_when_the_student_ranks_like_the_teacher(items, users, seed):
    """Cross-entropy is at least the target's entropy, with equality when the student's softmax over the
    unseen items is the teacher's: a student whose logits are the teacher's standardised scores over the
    temperature (plus any per-user constant) reaches it, and seen items never matter."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(users, items)).astype(np.float32) * 3
    seen = torch.from_numpy(rng.random((users, items)) < 0.3)
    seen[:, 0] = False  # every user has an unseen item
    distillation = Distillation(lambda rows: teacher[rows], weight=1.0, temperature=0.7)
    t = torch.from_numpy(teacher)
    standardised = (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True) / 0.7
    matched = standardised + torch.from_numpy(rng.normal(size=(users, 1)).astype(np.float32))
    matched = matched.masked_fill(seen, 1e3)  # whatever the student says about seen items is ignored
    target = torch.softmax(standardised.masked_fill(seen, float("-inf")), 1)
    entropy = float(-(target * torch.log(target.clamp_min(1e-30))).sum(1).mean())
    index = torch.arange(users)
    best = float(distillation.loss(matched, index, seen))
    other = float(distillation.loss(torch.from_numpy(rng.normal(size=(users, items)).astype(np.float32)), index, seen))
    assert best == pytest.approx(entropy, abs=1e-4)
    assert other >= best - 1e-5


def test_a_user_who_has_seen_every_item_adds_nothing():
    teacher = np.array([[1.0, 2.0], [3.0, 1.0]], dtype=np.float32)
    distillation = Distillation(lambda users: teacher[users], weight=1.0, temperature=1.0)
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    alone = distillation.loss(logits[1:], torch.tensor([1]), torch.tensor([[False, False]]))
    both = distillation.loss(logits, torch.tensor([0, 1]), torch.tensor([[True, True], [False, False]]))
    assert torch.isfinite(both) and float(both) == pytest.approx(float(alone))


def test_a_teacher_needs_the_multinomial_task():
    with pytest.raises(ConfigError, match="teacher"):
        create_model("two_tower", batching="pairs", teacher={"model": "ease"})
    with pytest.raises(ConfigError, match="teacher"):
        create_model("two_tower", preset="rating", teacher={"model": "ease"})
    with pytest.raises(ConfigError, match="no_such_model"):
        create_model("two_tower", teacher={"model": "no_such_model"})
