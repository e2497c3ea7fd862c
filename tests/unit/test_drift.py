"""Drift statistics on known distributions, and the SQL bins agreeing with the Python bins."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from retailml.monitoring.drift import (
    DriftReference,
    NumericReference,
    bin_index,
    build_reference,
    categorical_count_sql,
    compare,
    jensen_shannon,
    numeric_bin_sql,
    numeric_counts,
    psi,
    quantile_edges,
    reference_from_table,
    reference_to_table,
)
from retailml.training.synthetic import make_customer_features
from retailml.warehouse.duckdb import DuckDBWarehouse

RNG_SEED = 7


def _psi_of_samples(reference: np.ndarray, current: np.ndarray) -> float:
    edges = quantile_edges(reference, 10)
    return psi(numeric_counts(reference, edges), numeric_counts(current, edges))


# -- PSI ----------------------------------------------------------------------------------
def test_psi_identical_counts_is_zero() -> None:
    assert psi([10, 20, 30, 40], [10, 20, 30, 40]) == pytest.approx(0.0, abs=1e-12)
    assert psi([10, 20, 30, 40], [1, 2, 3, 4]) == pytest.approx(0.0, abs=1e-12)  # same shares


def test_psi_same_distribution_is_small_and_shifted_mean_is_large() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = rng.normal(0.0, 1.0, 20_000)
    assert _psi_of_samples(reference, rng.normal(0.0, 1.0, 20_000)) < 0.02
    shifted = _psi_of_samples(reference, rng.normal(1.0, 1.0, 20_000))
    assert shifted > 0.5
    # Monotone in the size of the shift.
    assert _psi_of_samples(reference, rng.normal(0.3, 1.0, 20_000)) < shifted


def test_psi_empty_bins_stay_finite() -> None:
    value = psi([100, 0, 0, 50], [0, 70, 0, 80])
    assert math.isfinite(value) and value > 1.0


def test_psi_is_symmetric_in_shares() -> None:
    a, b = [30, 30, 40], [50, 25, 25]
    assert psi(a, b) == pytest.approx(psi(b, a))


@pytest.mark.parametrize(
    ("reference", "current"),
    [([1, 2], [1, 2, 3]), ([0, 0], [1, 1]), ([1, 1], [0, 0]), ([1, -1], [1, 1])],
)
def test_psi_rejects_unusable_counts(reference: list[int], current: list[int]) -> None:
    with pytest.raises(ValueError):
        psi(reference, current)


# -- Jensen-Shannon -----------------------------------------------------------------------
def test_js_identical_is_zero_and_disjoint_is_one() -> None:
    assert jensen_shannon({"a": 5, "b": 5}, {"a": 50, "b": 50}) == pytest.approx(0.0, abs=1e-9)
    assert jensen_shannon({"a": 5}, {"b": 5}) == pytest.approx(1.0)


def test_js_handles_new_and_vanished_categories() -> None:
    reference = {"NL": 50, "DE": 30, "BE": 20}
    new_category = jensen_shannon(reference, {"NL": 50, "DE": 30, "BE": 20, "US": 40})
    vanished = jensen_shannon(reference, {"NL": 60, "DE": 40})
    for value in (new_category, vanished):
        assert math.isfinite(value) and 0.0 < value < 1.0
    # A small new category drifts less than a large one.
    assert jensen_shannon(reference, {**reference, "US": 2}) < new_category


def test_js_rejects_empty_side() -> None:
    with pytest.raises(ValueError):
        jensen_shannon({"a": 1}, {})


# -- bins: Python and SQL agree -----------------------------------------------------------
def test_bin_index_edges_belong_to_the_lower_bin_and_nan_to_the_null_bin() -> None:
    edges = (1.0, 2.0, 3.0)
    values = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 3.5, np.nan])
    assert bin_index(values, edges).tolist() == [0, 0, 1, 1, 2, 3, -1]
    assert numeric_counts(values, edges) == (1, 2, 2, 1, 1)


def test_quantile_edges_of_ties_are_distinct() -> None:
    values = np.array([0.0] * 80 + [1.0] * 10 + [5.0] * 10)
    edges = quantile_edges(values, 10)
    assert list(edges) == sorted(set(edges))
    assert quantile_edges(np.array([np.nan, np.nan]), 10) == ()


@pytest.mark.parametrize(
    "values",
    [
        [0.0, 0.0, 0.0, 1.0, 2.0, None, 7.5, -3.0, 0.1, 0.2],
        [1e-5, 2e-5, 3e-5, None, None, 1e6],
        [4.0, 4.0, 4.0, 4.0],
    ],
)
def test_sql_bins_match_python_bins(values: list[float | None]) -> None:
    warehouse = DuckDBWarehouse(":memory:")
    warehouse.replace_arrow("marts.t", pa.table({"x": pa.array(values, pa.float64())}))
    array = np.array([np.nan if v is None else v for v in values])
    edges = quantile_edges(array, 4)
    rows = warehouse.query_arrow(numeric_bin_sql("marts.t", "x", edges)).to_pylist()
    sql_counts = [0] * (len(edges) + 2)
    for row in rows:
        sql_counts[row["bin"] + 1] += row["n"]
    assert tuple(sql_counts) == numeric_counts(array, edges)


def test_categorical_sql_names_nulls() -> None:
    warehouse = DuckDBWarehouse(":memory:")
    warehouse.replace_arrow("marts.t", pa.table({"c": pa.array(["a", None, "a", "b"])}))
    rows = warehouse.query_arrow(categorical_count_sql("marts.t", "c")).to_pylist()
    assert {r["category"]: r["n"] for r in rows} == {"a": 2, "b": 1, "__null__": 1}


# -- reference and comparison -------------------------------------------------------------
def test_reference_round_trips_through_its_table() -> None:
    reference = build_reference(make_customer_features(500, seed=3))
    table = reference_to_table(reference, "churn", 4)
    assert set(table.column("model_version").to_pylist()) == {4}
    assert reference_from_table(table) == reference


def test_compare_flags_only_shifted_features() -> None:
    reference = build_reference(make_customer_features(4_000, seed=3))

    def current_counts(source: pa.Table) -> tuple[dict, dict]:
        numeric = {
            name: numeric_counts(
                np.asarray(source.column(name).to_numpy(zero_copy_only=False), dtype=float),
                ref.edges,
            )
            for name, ref in reference.numeric.items()
        }
        return numeric, build_reference(source).categorical

    no_drift = compare(reference, *current_counts(make_customer_features(4_000, seed=4)))
    assert not [f.feature for f in no_drift if f.is_drifted]
    with_drift = compare(
        reference, *current_counts(make_customer_features(4_000, seed=4, drift=True))
    )
    flagged = {f.feature for f in with_drift if f.is_drifted}
    assert {"recency_days", "country"} <= flagged
    assert all(math.isfinite(f.value) for f in with_drift)


def test_numeric_reference_layout() -> None:
    ref = NumericReference(edges=(1.0,), counts=(0, 3, 4))
    table = reference_to_table(DriftReference({"x": ref}, {}), "m", 1)
    assert table.column("bin").to_pylist() == [-1, 0, 1]
    assert table.column("upper_edge").to_pylist() == [None, 1.0, None]
