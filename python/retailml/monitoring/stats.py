"""Drift statistics on binned data (pure: counts in, numbers out).

Every statistic here works from what the warehouse can return cheaply: per-bin counts (and
per-bin value sums) of a numeric feature over the reference's quantile bins, and per-value
counts of a categorical feature. None of them sees a raw row, so the same numbers come
from a SQL aggregate pushed down to PostgreSQL, DuckDB or BigQuery and from numpy.

Numeric bins are laid out ``[null, bin 0, ..., bin k]`` for ``k`` interior edges (see
:mod:`.drift`). Every function returns finite numbers for empty bins, unseen and vanished
categories; a side with no observation at all is an error, not a NaN.

- :func:`psi`: population stability index (empty bins floored at a small share).
- :func:`binned_wasserstein`: the 1-Wasserstein distance between the two distributions,
  each bin's mass placed at the reference's mean of that bin (the transport of mass between
  bins; what moves inside a bin is not seen, which quantile bins keep small); divided by the
  reference's standard deviation it is an effect size that does not grow with the sample
  size (unlike a test statistic).
- :func:`ks_binned`: the two-sample Kolmogorov-Smirnov statistic on the bin edges and its
  p-value (the Kolmogorov distribution with Stephens' small-sample correction, good from a
  handful of rows). On binned data the statistic is a lower bound of the raw-data one, so
  the test is conservative.
- :func:`jensen_shannon`: Jensen-Shannon distance (base 2, in [0, 1]).
- :func:`chi_square`: chi-square test of homogeneity of the two category distributions
  (categories seen on neither side dropped; unseen or vanished ones kept).
- :func:`benjamini_hochberg`: adjusted p-values controlling the false discovery rate
  across features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special  # the distributions' tails (scipy.stats costs 70 MB more)

PSI_EPSILON = 1e-4


def _counts(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a vector, got shape {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{what} must be finite and >= 0")
    return array


def _pair(reference: Sequence[float], current: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ref = _counts(reference, "reference counts")
    cur = _counts(current, "current counts")
    if ref.shape != cur.shape:
        raise ValueError(f"bin counts differ in shape: {ref.shape} vs {cur.shape}")
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("need at least one reference and one current observation")
    return ref, cur


def psi(
    reference_counts: Sequence[float],
    current_counts: Sequence[float],
    *,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of two count vectors over the same bins.

    Shares are floored at ``epsilon`` so an empty bin on either side stays finite.
    """
    ref, cur = _pair(reference_counts, current_counts)
    p = np.maximum(ref / ref.sum(), epsilon)
    q = np.maximum(cur / cur.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def bin_means(counts: Sequence[float], sums: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Mean value of each non-null bin (``counts``/``sums`` without the null bin).

    An empty bin gets a representative point inside it (its midpoint; the edge for the
    open-ended outer bins), so it still has a place on the line with zero mass.
    """
    counts_ = np.asarray(counts, dtype=float)
    sums_ = np.asarray(sums, dtype=float)
    edges_ = np.asarray(edges, dtype=float)
    if len(counts_) != len(edges_) + 1 or len(sums_) != len(counts_):
        raise ValueError(
            f"{len(edges_)} edges need {len(edges_) + 1} bin counts and sums, "
            f"got {len(counts_)} and {len(sums_)}"
        )
    if edges_.size == 0:
        fallback = np.zeros(1)
    else:
        inner = (edges_[:-1] + edges_[1:]) / 2
        fallback = np.concatenate([[edges_[0]], inner, [edges_[-1]]])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts_ > 0, sums_ / np.where(counts_ > 0, counts_, 1.0), fallback)
    return means


def wasserstein_points(
    points_a: np.ndarray, weights_a: np.ndarray, points_b: np.ndarray, weights_b: np.ndarray
) -> float:
    """1-Wasserstein distance of two discrete distributions (points with weights >= 0)."""
    a = np.asarray(weights_a, dtype=float)
    b = np.asarray(weights_b, dtype=float)
    if a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("need positive mass on both sides")
    support = np.concatenate([points_a, points_b])
    order = np.argsort(support, kind="stable")
    support = support[order]
    mass_a = np.concatenate([a / a.sum(), np.zeros(len(points_b))])[order]
    mass_b = np.concatenate([np.zeros(len(points_a)), b / b.sum()])[order]
    cdf_gap = np.abs(np.cumsum(mass_a) - np.cumsum(mass_b))[:-1]
    return float(np.sum(cdf_gap * np.diff(support)))


def binned_wasserstein(
    edges: Sequence[float],
    reference_counts: Sequence[float],
    reference_sums: Sequence[float],
    current_counts: Sequence[float],
) -> float:
    """1-Wasserstein distance of the non-null values, each bin's mass (on both sides) at the
    reference's mean of that bin.

    Inputs are the non-null bins only (``len(edges) + 1`` each). Exact when every bin holds
    a single value; otherwise it sees the mass moving between bins, not inside one, so the
    warehouse only has to count (no per-bin sums of the current window).
    """
    ref_counts, cur_counts = _pair(reference_counts, current_counts)
    points = bin_means(ref_counts, reference_sums, edges)
    return wasserstein_points(points, ref_counts, points, cur_counts)


def ks_binned(
    reference_counts: Sequence[float], current_counts: Sequence[float]
) -> tuple[float, float]:
    """Two-sample KS statistic and p-value from counts over the same ordered bins."""
    ref, cur = _pair(reference_counts, current_counts)
    n, m = ref.sum(), cur.sum()
    statistic = float(np.max(np.abs(np.cumsum(ref) / n - np.cumsum(cur) / m)))
    root = math.sqrt(n * m / (n + m))
    p_value = float(special.kolmogorov((root + 0.12 + 0.11 / root) * statistic))
    return statistic, min(max(p_value, 0.0), 1.0)


def _aligned(
    reference: Mapping[str, float], current: Mapping[str, float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    categories = sorted(set(reference) | set(current))
    ref = _counts([float(reference.get(c, 0.0)) for c in categories], "reference counts")
    cur = _counts([float(current.get(c, 0.0)) for c in categories], "current counts")
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("need at least one reference and one current count")
    return categories, ref, cur


def jensen_shannon(reference: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two category -> count mappings.

    A category on one side only counts as zero on the other: finite, no smoothing needed.
    """
    _, ref, cur = _aligned(reference, current)
    p, q = ref / ref.sum(), cur / cur.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    divergence = max(0.5 * kl(p) + 0.5 * kl(q), 0.0)
    return float(min(math.sqrt(divergence), 1.0))


def chi_square(reference: Mapping[str, float], current: Mapping[str, float]) -> tuple[float, float]:
    """Chi-square test of homogeneity (2 x categories): ``(statistic, p_value)``.

    Unseen (current only) and vanished (reference only) categories are cells like any other;
    a single category in all gives ``(0.0, 1.0)``.
    """
    _, ref, cur = _aligned(reference, current)
    keep = (ref + cur) > 0
    table = np.vstack([ref[keep], cur[keep]])
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    p_value = float(special.chdtrc(table.shape[1] - 1, statistic))
    return statistic, p_value


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (same order as the input)."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return []
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must be in [0, 1], got {p_values!r}")
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return [float(v) for v in out]
