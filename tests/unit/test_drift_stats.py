"""The drift statistics on known distributions: no drift, shifted mean, new and vanished
categories, empty bins; and against scipy/statsmodels where they compute the same thing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from retailml.monitoring import stats
from retailml.monitoring.drift import numeric_counts, numeric_sums, quantile_edges

RNG_SEED = 7


def _binned(reference: np.ndarray, current: np.ndarray, bins: int = 10):
    edges = quantile_edges(reference, bins)
    return (
        edges,
        numeric_counts(reference, edges),
        numeric_sums(reference, edges),
        numeric_counts(current, edges),
        numeric_sums(current, edges),
    )


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    _, ref, _, cur, _ = _binned(reference, current)
    return stats.psi(ref, cur)


def _wasserstein(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    edges, ref, ref_sums, cur, _ = _binned(reference, current, bins)
    return stats.binned_wasserstein(edges, ref[1:], ref_sums[1:], cur[1:])


# -- PSI ----------------------------------------------------------------------------------
def test_psi_identical_shares_is_zero() -> None:
    assert stats.psi([10, 20, 30, 40], [10, 20, 30, 40]) == pytest.approx(0.0, abs=1e-12)
    assert stats.psi([10, 20, 30, 40], [1, 2, 3, 4]) == pytest.approx(0.0, abs=1e-12)


def test_psi_no_drift_is_small_and_a_shifted_mean_is_large() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = rng.normal(0.0, 1.0, 20_000)
    assert _psi(reference, rng.normal(0.0, 1.0, 20_000)) < 0.02
    shifted = _psi(reference, rng.normal(1.0, 1.0, 20_000))
    assert shifted > 0.5
    assert _psi(reference, rng.normal(0.3, 1.0, 20_000)) < shifted


def test_psi_empty_bins_stay_finite() -> None:
    value = stats.psi([100, 0, 0, 50], [0, 70, 0, 80])
    assert math.isfinite(value) and value > 1.0


@pytest.mark.parametrize(
    ("reference", "current"),
    [([1, 2], [1, 2, 3]), ([0, 0], [1, 1]), ([1, 1], [0, 0]), ([1, -1], [1, 1])],
)
def test_psi_rejects_unusable_counts(reference: list[int], current: list[int]) -> None:
    with pytest.raises(ValueError):
        stats.psi(reference, current)


# -- Wasserstein --------------------------------------------------------------------------
def test_binned_wasserstein_is_exact_when_each_bin_holds_one_value() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = rng.integers(0, 8, 5_000).astype(float)
    current = rng.integers(3, 8, 3_000).astype(float)  # shifted, within the reference's values
    edges = tuple(float(v) for v in range(0, 8))  # one integer per bin
    ref, cur = numeric_counts(reference, edges), numeric_counts(current, edges)
    ours = stats.binned_wasserstein(edges, ref[1:], numeric_sums(reference, edges)[1:], cur[1:])
    assert ours == pytest.approx(scipy_stats.wasserstein_distance(reference, current), rel=1e-9)


def test_binned_wasserstein_recovers_a_mean_shift_and_does_not_grow_with_n() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = rng.normal(0.0, 1.0, 50_000)
    # A pure shift by 0.5 sd: the distance is 0.5, at any sample size.
    for n in (2_000, 200_000):
        assert _wasserstein(reference, rng.normal(0.5, 1.0, n), bins=20) == pytest.approx(
            0.5, abs=0.05
        )
    assert _wasserstein(reference, rng.normal(0.0, 1.0, 200_000), bins=20) < 0.03


def test_binned_wasserstein_empty_bins_are_finite() -> None:
    value = stats.binned_wasserstein((1.0, 2.0), [5, 0, 0], [2.5, 0, 0], [0, 0, 4])
    assert math.isfinite(value) and value > 0


# -- KS -----------------------------------------------------------------------------------
def test_ks_binned_matches_scipy_when_bins_are_the_distinct_values() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = rng.integers(0, 6, 300).astype(float)
    current = rng.integers(1, 7, 200).astype(float)
    edges = tuple(float(v) for v in range(0, 7))
    statistic, p_value = stats.ks_binned(
        numeric_counts(reference, edges), numeric_counts(current, edges)
    )
    expected = scipy_stats.ks_2samp(reference, current, method="exact")
    assert statistic == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue, rel=0.15)


def test_ks_small_sample_of_the_same_distribution_is_not_significant() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = rng.gamma(2.0, 3.0, 10_000)
    _, ref, _, cur, _ = _binned(reference, rng.gamma(2.0, 3.0, 150))
    assert stats.ks_binned(ref, cur)[1] > 0.05
    _, ref, _, cur, _ = _binned(reference, rng.gamma(2.0, 3.0, 150) + 3.0)
    assert stats.ks_binned(ref, cur)[1] < 1e-3


# -- categorical --------------------------------------------------------------------------
def test_js_identical_is_zero_and_disjoint_is_one() -> None:
    assert stats.jensen_shannon({"a": 5, "b": 5}, {"a": 50, "b": 50}) == pytest.approx(
        0.0, abs=1e-9
    )
    assert stats.jensen_shannon({"a": 5}, {"b": 5}) == pytest.approx(1.0)


def test_new_and_vanished_categories_are_finite() -> None:
    reference = {"NL": 50, "DE": 30, "BE": 20}
    for current in ({**reference, "US": 40}, {"NL": 60, "DE": 40}):
        js = stats.jensen_shannon(reference, current)
        chi2, p = stats.chi_square(reference, current)
        assert 0.0 < js < 1.0
        assert math.isfinite(chi2) and chi2 > 0 and 0.0 <= p < 0.05
    assert stats.jensen_shannon(reference, {**reference, "US": 2}) < stats.jensen_shannon(
        reference, {**reference, "US": 40}
    )


def test_chi_square_matches_scipy_and_handles_a_single_category() -> None:
    reference, current = {"a": 30, "b": 50, "c": 20}, {"a": 25, "b": 45, "c": 40}
    table = [[30, 50, 20], [25, 45, 40]]
    expected = scipy_stats.chi2_contingency(table, correction=False)
    assert stats.chi_square(reference, current) == pytest.approx(
        (expected.statistic, expected.pvalue)
    )
    assert stats.chi_square({"a": 3}, {"a": 9}) == (0.0, 1.0)


def test_categorical_statistics_reject_an_empty_side() -> None:
    with pytest.raises(ValueError):
        stats.jensen_shannon({"a": 1}, {})
    with pytest.raises(ValueError):
        stats.chi_square({}, {"a": 1})


# -- Benjamini-Hochberg -------------------------------------------------------------------
def test_benjamini_hochberg_matches_statsmodels() -> None:
    p = [0.001, 0.04, 0.03, 0.5, 0.2, 0.0001, 1.0]
    expected = multipletests(p, method="fdr_bh")[1]
    assert stats.benjamini_hochberg(p) == pytest.approx(list(expected))
    assert stats.benjamini_hochberg([]) == []
    with pytest.raises(ValueError):
        stats.benjamini_hochberg([0.5, float("nan")])
