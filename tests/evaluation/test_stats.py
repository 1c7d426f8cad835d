"""The report's statistics against hand-computed values: confidence intervals, the paired signed-rank test,
Holm's correction and how p-values are printed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recforge.evaluation.report_tables import p_value_text
from recforge.evaluation.stats import holm, mean_ci, paired_test


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci(np.array([1.0, 2.0, 3.0, 4.0, np.nan]))  # NaN ignored
    # s = sqrt(5/3), t(0.975, 3) = 3.182446
    assert mean == 2.5 and half == pytest.approx(3.182446305 * np.sqrt(5 / 3) / 2, rel=1e-8)
    assert np.isnan(mean_ci(np.array([1.0]))[1])


def test_wilcoxon_exact_p_of_six_positive_differences():
    """Six distinct positive differences: the signed-rank statistic's most extreme value, two-sided p = 2/2^6."""
    b = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    a = b + np.array([1, 2, 3, 4, 5, 6]) / 100
    test = paired_test(np.append(a, np.nan), np.append(b, 0.0))  # the pair with a NaN is dropped
    assert test.n == 6 and test.p_value == pytest.approx(2 / 2**6) and test.mean_difference == pytest.approx(0.035)
    same = paired_test(b, b)
    assert same.p_value == 1.0 and np.isnan(same.statistic)


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06 for the last
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_never_lowers_a_p_value_and_keeps_the_order(p_values):
    adjusted = holm(p_values)
    p = np.asarray(p_values)
    assert ((adjusted >= p) & (adjusted <= 1)).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adjusted[order]) >= 0).all()
    assert adjusted.min() == pytest.approx(min(1.0, len(p) * p.min()))


def test_p_values_print_to_two_digits_and_an_underflow_is_not_zero():
    """A normal approximation's tail past double precision underflows to 0.0: the report said p = 0."""
    assert p_value_text(1.234e-95) == "1.2e-95" and p_value_text(0.5) == "0.5"
    assert p_value_text(0.0) == "< 1e-300"
