"""Drift checks: bins in SQL agree with numpy (the pushdown computes what Python would), the
reference round-trips through its table, and the dataset verdict on known shifts."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from retailml.monitoring.drift import (
    DriftReference,
    DriftThresholds,
    NumericReference,
    bin_index,
    build_reference,
    compare,
    compare_tables,
    conditional_counts_sql,
    count_arrow,
    count_current,
    grouping_sets_sql,
    numeric_counts,
    quantile_edges,
    reference_from_table,
    reference_to_table,
    unseen_categories_sql,
)
from retailml.training.synthetic import make_customer_features
from retailml.warehouse.duckdb import DuckDBWarehouse

RNG_SEED = 7


# -- bins ---------------------------------------------------------------------------------
def test_bin_index_edges_belong_to_the_lower_bin_and_nan_to_the_null_bin() -> None:
    edges = (1.0, 2.0, 3.0)
    values = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 3.5, np.nan])
    assert bin_index(values, edges).tolist() == [0, 0, 1, 1, 2, 3, -1]
    assert numeric_counts(values, edges) == (1, 2, 2, 1, 1)


def test_quantile_edges_of_ties_are_distinct_and_the_bin_count_is_a_setting() -> None:
    values = np.array([0.0] * 80 + [1.0] * 10 + [5.0] * 10)
    edges = quantile_edges(values, 10)
    assert list(edges) == sorted(set(edges))
    assert quantile_edges(np.array([np.nan, np.nan]), 10) == ()
    spread = np.random.default_rng(RNG_SEED).normal(size=10_000)
    assert len(quantile_edges(spread, 20)) == 19 and len(quantile_edges(spread, 5)) == 4
    with pytest.raises(ValueError, match="n_bins"):
        quantile_edges(spread, 1)


# -- the warehouse computes what numpy computes ---------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        [0.0, 0.0, 0.0, 1.0, 2.0, None, 7.5, -3.0, 0.1, 0.2],
        [1e-5, 2e-5, 3e-5, None, None, 1e6],
        [4.0, 4.0, 4.0, 4.0],
    ],
)
def test_pushdown_counts_match_numpy(values: list[float | None]) -> None:
    table = pa.table(
        {
            "x": pa.array(values, pa.float64()),
            "k": pa.array([int(v) if v is not None else None for v in values], pa.int64()),
            "c": pa.array([None if v is None else ("a" if v > 0.5 else "b") for v in values]),
        }
    )
    reference = build_reference(table, numeric=("x", "k"), categorical=("c",), n_bins=4)
    warehouse = DuckDBWarehouse(":memory:")
    warehouse.replace_arrow("marts.t", table)
    pushed = count_current(warehouse, "marts.t", reference)
    pulled = count_arrow(table, reference)
    assert pushed == pulled and pushed.rows == len(values)


def test_pushdown_filters_the_window_and_names_unseen_categories() -> None:
    reference_rows = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", "a", "b", None]})
    reference = build_reference(reference_rows, numeric=("x",), categorical=("c",), n_bins=2)
    current = pa.table(
        {"x": [1.0, 9.0, 9.0, 2.0], "c": ["a", "new", "it's", "b"], "day": [1, 2, 2, 1]}
    )
    warehouse = DuckDBWarehouse(":memory:")
    warehouse.replace_arrow("marts.t", current)
    counts = count_current(warehouse, "marts.t", reference, where="day = ?", params=[2])
    assert counts.rows == 2
    assert counts.categorical == {"c": {"new": 1, "it's": 1}}
    assert counts.numeric["x"] == (0, 0, 2)  # [null, x <= 2.5, x > 2.5]
    assert counts == count_arrow(current.filter(pc.equal(current["day"], 2)), reference)


def test_sql_is_written_for_each_dialect() -> None:
    reference = DriftReference({"x": NumericReference((1.0,), (0, 1, 1))}, {"c": {"a": 1}})
    bigquery = conditional_counts_sql("marts.t", reference, dialect="bigquery")
    assert "countif(" in bigquery and "as float64)" in bigquery and "as string)" in bigquery
    assert "double precision" not in bigquery
    postgres = conditional_counts_sql("marts.t", reference, dialect="postgres")
    assert "count(*) filter (where" in postgres and "as double precision)" in postgres
    assert "group by" not in postgres  # one scan, parallel, no hash table
    typed = conditional_counts_sql(
        "marts.t", DriftReference({"k": NumericReference((2.5,), (0, 1, 1))}, {"c": {"a": 1}}),
        column_types={"k": "bigint", "c": "text"},
    )  # fmt: skip
    assert '"k" <= 2)' in typed and "cast(" not in typed  # x <= 2.5 is x <= 2 for integers
    assert "grouping sets ((k_0), (k_1))" in grouping_sets_sql("marts.t", reference)
    unseen = unseen_categories_sql("marts.t", "c", ["a", "o'k"], dialect="postgres")
    assert "not in ('a', 'o''k')" in unseen
    broken = DriftReference({"x": NumericReference((math.inf,), (0, 1, 1))}, {})
    with pytest.raises(Exception, match="not finite"):
        conditional_counts_sql("marts.t", broken)


# -- the reference ------------------------------------------------------------------------
def test_reference_round_trips_through_its_table() -> None:
    data = make_customer_features(500, seed=3)
    scores = np.linspace(0.0, 1.0, data.num_rows)
    reference = build_reference(data, scores=scores, n_bins=8)
    table = reference_to_table(reference, "churn", 4)
    assert set(table.column("model_version").to_pylist()) == {4}
    assert reference_from_table(table) == reference
    assert reference.scores is not None and len(reference.scores.edges) == 7


def test_reference_rejects_bad_input() -> None:
    with pytest.raises(Exception, match="zero rows"):
        build_reference(make_customer_features(10).slice(0, 0))
    with pytest.raises(Exception, match="lack the features"):
        build_reference(pa.table({"x": [1.0]}))
    with pytest.raises(Exception, match="scores for"):
        build_reference(make_customer_features(10), scores=np.zeros(3))


# -- the verdict --------------------------------------------------------------------------
def test_no_drift_raises_no_alarm_and_a_shift_flags_only_the_shifted_features() -> None:
    reference = build_reference(make_customer_features(4_000, seed=3))
    calm, features = compare_tables(reference, make_customer_features(4_000, seed=4))
    assert not calm and not [f.feature for f in features if f.is_drifted]
    drifted, features = compare_tables(reference, make_customer_features(4_000, seed=4, drift=True))
    flagged = {f.feature for f in features if f.is_drifted}
    assert drifted and {"recency_days", "country"} <= flagged
    assert "tenure_days" not in flagged
    country = next(f for f in features if f.feature == "country")
    assert "unseen: US" in country.note
    for f in features:
        assert all(math.isfinite(v) for v in (f.value, f.p_value, f.p_adjusted) if v is not None)


def test_a_tiny_shift_in_a_huge_window_is_significant_but_not_material() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = build_reference(
        pa.table({"x": rng.normal(0.0, 1.0, 50_000)}), numeric=("x",), categorical=()
    )
    current = pa.table({"x": rng.normal(0.03, 1.0, 1_000_000)})
    alarm, [feature] = compare_tables(reference, current)
    assert feature.p_adjusted < 1e-6  # the test sees it...
    assert not feature.is_drifted and not alarm  # ...the effect size says it does not matter


def test_a_large_shift_in_a_tiny_window_is_material_but_not_significant() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = build_reference(
        pa.table({"x": rng.normal(0.0, 1.0, 50_000)}), numeric=("x",), categorical=()
    )
    alarm, [feature] = compare_tables(reference, pa.table({"x": rng.normal(0.5, 1.0, 12)}))
    assert feature.value >= feature.threshold  # PSI on 12 rows is large...
    assert feature.p_adjusted > 0.01 and not alarm  # ...but 12 rows are not evidence


def test_benjamini_hochberg_keeps_many_noisy_features_quiet() -> None:
    rng = np.random.default_rng(RNG_SEED)
    names = [f"x{i}" for i in range(40)]
    reference = build_reference(
        pa.table({n: rng.normal(size=3_000) for n in names}), numeric=names, categorical=()
    )
    alarms = sum(
        compare_tables(reference, pa.table({n: rng.normal(size=300) for n in names}))[0]
        for _ in range(20)
    )
    assert alarms <= 1


def test_empty_current_window_is_not_a_drift() -> None:
    reference = build_reference(make_customer_features(200, seed=3))
    features = compare(reference, count_arrow(make_customer_features(10).slice(0, 0), reference))
    assert not any(f.is_drifted for f in features)
    assert all(f.note == "no rows to compare" for f in features)


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="alpha"):
        DriftThresholds(alpha=0.0)
    with pytest.raises(ValueError, match="effect-size"):
        DriftThresholds(psi=0.0)


def test_the_bigquery_pushdown_parses_as_bigquery_sql() -> None:
    import sqlglot

    from retailml.warehouse.bigquery import to_bigquery_sql

    reference = build_reference(make_customer_features(300, seed=3), n_bins=5)
    queries = [
        conditional_counts_sql(
            "marts.ml_customer_features", reference, where="as_of_date = ?", dialect="bigquery"
        ),
        unseen_categories_sql(
            "marts.ml_customer_features", "country", ["NL", "DE"], where="as_of_date = ?",
            dialect="bigquery",
        ),
    ]  # fmt: skip
    for sql in queries:
        translated, _ = to_bigquery_sql(sql, ["2024-06-30"])
        [statement] = sqlglot.parse(translated, read="bigquery")  # raises on a syntax error
        assert statement is not None and "`country`" in translated and "@p0" in translated
    assert "countif(`recency_days` <= " in to_bigquery_sql(queries[0], ["2024-06-30"])[0]
