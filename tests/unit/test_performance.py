"""Realized performance of matured churn scores: known cases on an in-memory DuckDB
warehouse (scores in ``mlops.churn_scores``, labels in a ``marts.ml_churn_training``
stand-in, training metrics in a real registry)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression

from retailml.features.spec import CHURN_TRAINING_TABLE
from retailml.monitoring.performance import (
    METRICS,
    PERFORMANCE_TABLE,
    PerformanceError,
    PerformanceReport,
    check_performance,
    evaluate_weeks,
    is_degraded,
    iso_week_start,
    labelled_scores_sql,
    realized_metrics,
    training_values,
)
from retailml.registry import LocalArtifactStore, ModelRegistry
from retailml.training.scoring import SCORES_SCHEMA, SCORES_TABLE
from retailml.warehouse.duckdb import DuckDBWarehouse

HORIZON = 30
W10, W11, W12 = date(2024, 3, 4), date(2024, 3, 11), date(2024, 3, 18)  # Mondays
AS_OF = date(2024, 5, 1)  # every Monday above has matured (as_of_date <= 2024-04-01)
RUN_AT = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
TRAINING_METRICS = {
    "roc_auc": 0.80,
    "brier": 0.15,
    "threshold": 0.5,
    "precision": 0.6,
    "recall": 0.7,
    "holdout": {"rows": 1_000, "positive_rate": 0.3},
    "calibration": [
        {"rows": 600, "mean_predicted": 0.2, "observed_rate": 0.2},
        {"rows": 400, "mean_predicted": 0.5, "observed_rate": 0.45},
    ],
}


@pytest.fixture
def warehouse() -> Iterator[DuckDBWarehouse]:
    wh = DuckDBWarehouse(":memory:")
    yield wh
    wh.close()


@pytest.fixture
def registry(warehouse: DuckDBWarehouse, tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(warehouse, LocalArtifactStore(tmp_path / "models"), code_version="t")
    registry.register(
        "churn", LogisticRegression(), kind="sklearn", params={}, metrics=TRAINING_METRICS,
        fingerprint={},
    )  # fmt: skip
    return registry


def _labels(n: int, seed: int, rate: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < rate


def perfect(y: np.ndarray) -> np.ndarray:
    return np.where(y, 0.9, 0.1)


def shuffled(y: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(perfect(y))


def load(
    warehouse: DuckDBWarehouse,
    days: Sequence[tuple[date, int, np.ndarray, np.ndarray]],
    *,
    label_days: Sequence[date] | None = None,
) -> None:
    """Scores and labels of (as_of_date, version, labels, scores) days; labels only for
    ``label_days`` when given (the mart's cutoffs)."""
    score_rows, label_rows = [], []
    for as_of, version, y, score in days:
        for i, (label, p) in enumerate(zip(y, score, strict=True)):
            customer = f"C{i + 1:07d}"
            score_rows.append(
                {"customer_id": customer, "as_of_date": as_of, "churn_probability": float(p),
                 "model_name": "churn", "model_version": version, "scored_at": RUN_AT}
            )  # fmt: skip
            if label_days is None or as_of in label_days:
                label_rows.append(
                    {"customer_id": customer, "cutoff_date": as_of, "is_churned": bool(label)}
                )
    warehouse.create_table(SCORES_TABLE, SCORES_SCHEMA)
    warehouse.append_arrow(SCORES_TABLE, pa.Table.from_pylist(score_rows, schema=SCORES_SCHEMA))
    labels = pa.Table.from_pylist(
        label_rows,
        schema=pa.schema(
            [("customer_id", pa.string()), ("cutoff_date", pa.date32()), ("is_churned", pa.bool_())]
        ),
    )
    warehouse.replace_arrow(CHURN_TRAINING_TABLE, labels)


def check(warehouse: DuckDBWarehouse, registry: ModelRegistry, **kwargs: Any) -> PerformanceReport:
    options: dict[str, Any] = {"as_of": AS_OF, "run_at": RUN_AT, **kwargs}
    return check_performance(warehouse, registry, horizon_days=HORIZON, **options)


def stored(warehouse: DuckDBWarehouse) -> list[dict[str, object]]:
    return warehouse.query_arrow(
        f"select * from {PERFORMANCE_TABLE} order by run_at, week_start, model_version, metric"
    ).to_pylist()


# -- pure parts ---------------------------------------------------------------------------
def test_iso_week_start_is_the_monday_of_the_iso_week() -> None:
    dates = pa.array(
        [date(2024, 3, 4), date(2024, 3, 10), date(2024, 3, 11), date(2021, 1, 1), date(2021, 1, 3)]
    )
    starts = iso_week_start(dates).astype(object).tolist()
    assert starts == [W10, W10, W11, date(2020, 12, 28), date(2020, 12, 28)]


def test_realized_metrics_of_a_known_case() -> None:
    y = np.array([1, 0, 1, 0])
    score = np.array([0.8, 0.4, 0.6, 0.2])
    m = realized_metrics(y, score, threshold=0.5)
    assert m["n"] == 4 and m["positives"] == 2
    assert m["roc_auc"] == 1.0
    assert m["brier"] == pytest.approx((0.04 + 0.16 + 0.16 + 0.04) / 4)
    expected_log_loss = -np.mean(np.log([0.8, 0.6, 0.6, 0.8]))
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["mean_score"] == pytest.approx(0.5) and m["churn_rate"] == 0.5
    assert m["calibration_gap"] == pytest.approx(0.0)
    # Undefined metrics are None, not 0: no threshold, nothing predicted, nothing churned.
    assert realized_metrics(y, score, None)["precision"] is None
    none_predicted = realized_metrics(y, score, threshold=0.99)
    assert none_predicted["precision"] is None and none_predicted["recall"] == 0.0
    no_churn = realized_metrics(np.zeros(3), np.array([0.1, 0.2, 0.7]), 0.5)
    assert no_churn["roc_auc"] is None and no_churn["recall"] is None
    assert no_churn["precision"] == 0.0 and math.isfinite(no_churn["log_loss"] or math.nan)


def test_realized_metrics_reject_empty_or_mismatched_input() -> None:
    with pytest.raises(ValueError):
        realized_metrics(np.array([]), np.array([]), 0.5)
    with pytest.raises(ValueError):
        realized_metrics(np.array([1, 0]), np.array([0.5]), 0.5)


def test_training_values_come_from_the_registry_metrics() -> None:
    values = training_values(TRAINING_METRICS)
    assert values["roc_auc"] == 0.8 and values["brier"] == 0.15
    assert values["churn_rate"] == 0.3 and values["n"] == 1_000 and values["positives"] == 300
    assert values["mean_score"] == pytest.approx(0.6 * 0.2 + 0.4 * 0.5)
    assert values["calibration_gap"] == pytest.approx(0.32 - 0.3)
    assert values["log_loss"] is None  # training records no log loss
    assert set(training_values({}).values()) == {None}


@pytest.mark.parametrize(
    ("auc", "training", "n", "expected"),
    [
        (0.70, 0.80, 500, True),
        (0.76, 0.80, 500, False),  # within the allowed drop
        (0.50, 0.80, 199, False),  # under the minimum count
        (None, 0.80, 500, False),  # single-class week
        (0.50, None, 500, False),  # no training value
    ],
)
def test_is_degraded(auc: float | None, training: float | None, n: int, expected: bool) -> None:
    assert is_degraded(auc, training, n, auc_drop=0.05, min_count=200) is expected


def test_evaluate_weeks_groups_by_iso_week_and_version() -> None:
    y = _labels(300, 1)
    rows = pa.table(
        {
            "as_of_date": pa.array([W10] * 100 + [date(2024, 3, 6)] * 100 + [W11] * 100),
            "model_version": pa.array([1] * 200 + [2] * 100, pa.int64()),
            "churn_probability": perfect(y),
            "is_churned": y,
        }
    )
    weeks = evaluate_weeks(rows, {1: TRAINING_METRICS}, min_count=50)
    assert [(w.week_start, w.model_version, w.n) for w in weeks] == [(W10, 1, 200), (W11, 2, 100)]
    assert weeks[0].training["roc_auc"] == 0.8 and weeks[1].training["roc_auc"] is None


def test_the_sql_joins_scores_to_labels_on_customer_and_cutoff() -> None:
    sql = labelled_scores_sql()
    assert f"inner join {CHURN_TRAINING_TABLE} as labels" in sql
    assert "scores.customer_id = labels.customer_id" in sql
    assert "scores.as_of_date = labels.cutoff_date" in sql
    assert "scores.as_of_date <= ?" in sql and ">= ?" in labelled_scores_sql(since=True)


# -- the check on a warehouse ---------------------------------------------------------------
def test_perfect_scorer_has_auc_one(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    y10, y11 = _labels(400, 1), _labels(400, 2)
    load(warehouse, [(W10, 1, y10, perfect(y10)), (W11, 1, y11, perfect(y11))])
    report = check(warehouse, registry)

    assert report.message is None and not report.needs_retraining and report.reasons == []
    assert [(w.week_start, w.model_version, w.n) for w in report.weeks] == [
        (W10, 1, 400),
        (W11, 1, 400),
    ]
    for week, y in zip(report.weeks, (y10, y11), strict=True):
        assert week.roc_auc == 1.0
        assert week.values["precision"] == 1.0 and week.values["recall"] == 1.0
        assert week.values["brier"] == pytest.approx(0.01)
        assert week.values["churn_rate"] == pytest.approx(y.mean())
        assert week.values["calibration_gap"] == pytest.approx(0.1 + 0.8 * y.mean() - y.mean())
    assert report.labelled_rows == report.matured_rows == report.scored_rows == 800

    rows = stored(warehouse)
    assert len(rows) == 2 * len(METRICS)
    auc = [r for r in rows if r["metric"] == "roc_auc"]
    assert [r["value"] for r in auc] == [1.0, 1.0]
    assert {r["training_value"] for r in auc} == {0.8} and {r["threshold"] for r in auc} == {0.05}
    assert not any(r["is_degraded"] for r in rows)
    assert {r["run_at"] for r in rows} == {RUN_AT}
    assert "\n" not in report.summary() and "0 degraded" in report.summary()


def test_shuffled_week_flags_decay(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    y10, y11 = _labels(400, 1), _labels(400, 2)
    load(warehouse, [(W10, 1, y10, perfect(y10)), (W11, 1, y11, shuffled(y11))])
    report = check(warehouse, registry)

    degraded = report.weeks[1]
    assert degraded.week_start == W11 and degraded.is_degraded
    assert degraded.roc_auc is not None and abs(degraded.roc_auc - 0.5) < 0.1
    assert not report.weeks[0].is_degraded
    assert report.needs_retraining
    assert len(report.reasons) == 1
    reason = report.reasons[0]
    assert "churn v1" in reason and "2024-W11" in reason and "2024-03-11" in reason
    assert "RETRAIN" in report.summary() and "v1 2024-W11" in report.summary()
    assert "| 2024-03-11 | v1 | 400 |" in report.markdown() and "| yes |" in report.markdown()
    flagged = [(r["week_start"], r["metric"]) for r in stored(warehouse) if r["is_degraded"]]
    assert flagged == [(W11, "roc_auc")]


def test_auc_drop_threshold_is_a_parameter(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    y = _labels(400, 2)
    load(warehouse, [(W11, 1, y, shuffled(y))])
    assert not check(warehouse, registry, auc_drop=0.5).needs_retraining


def test_immature_scores_are_excluded(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    recent = AS_OF - timedelta(days=HORIZON - 1)  # its label window is not over yet
    y_old, y_new = _labels(400, 1), _labels(400, 2)
    # The recent day even has (bad) labels in the table: maturity alone must exclude it.
    load(warehouse, [(W10, 1, y_old, perfect(y_old)), (recent, 1, y_new, shuffled(y_new))])
    report = check(warehouse, registry)

    assert [w.week_start for w in report.weeks] == [W10]
    assert not report.needs_retraining
    assert report.matured_through == AS_OF - timedelta(days=HORIZON)
    assert (report.scored_rows, report.matured_rows, report.labelled_rows) == (800, 400, 400)


def test_as_of_defaults_to_the_latest_scoring_day(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    latest = W10 + timedelta(days=HORIZON)  # W10 matures exactly on this day
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y)), (W11, 1, y, shuffled(y)), (latest, 1, y, y * 1.0)])
    report = check(warehouse, registry, as_of=None)
    assert report.as_of == latest and report.matured_through == W10
    assert [w.week_start for w in report.weeks] == [W10]


def test_week_under_min_count_reports_but_never_flags(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    y10, y11 = _labels(400, 1), _labels(60, 2)
    load(warehouse, [(W10, 1, y10, perfect(y10)), (W11, 1, y11, shuffled(y11, seed=3))])
    report = check(warehouse, registry, min_count=200)

    small = report.weeks[1]
    assert small.week_start == W11 and small.n == 60 and small.below_min_count
    assert small.roc_auc is not None and small.roc_auc < 0.75  # bad, but too few rows
    assert not small.is_degraded and not report.needs_retraining and report.reasons == []
    assert "1 under 200 rows" in report.summary() and "no (n < 200)" in report.markdown()
    assert {r["week_start"] for r in stored(warehouse)} == {W10, W11}


def test_single_class_week_has_null_auc(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    y = np.zeros(300, dtype=bool)
    load(warehouse, [(W10, 1, y, np.full(300, 0.2))])
    report = check(warehouse, registry)

    (week,) = report.weeks
    assert week.roc_auc is None and week.values["recall"] is None
    assert week.values["brier"] == pytest.approx(0.04)
    assert math.isfinite(week.values["log_loss"] or math.nan)
    assert not report.needs_retraining
    auc = next(r for r in stored(warehouse) if r["metric"] == "roc_auc")
    assert auc["value"] is None and auc["is_degraded"] is False
    assert "| — | 0.8000 |" in report.markdown()


def test_versions_are_evaluated_against_their_own_training(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    registry.register(
        "churn", LogisticRegression(), kind="sklearn", params={},
        metrics={**TRAINING_METRICS, "roc_auc": 0.95}, fingerprint={},
    )  # fmt: skip
    y = _labels(400, 1)
    # v1 and v2 score the same week equally well (AUC about 0.83): only v2 has decayed.
    noisy = np.clip(perfect(y) + np.random.default_rng(5).normal(0, 0.6, y.size), 0, 1)
    load(warehouse, [(W10, 1, y, noisy)])
    warehouse.execute(
        f"insert into {SCORES_TABLE} select customer_id, as_of_date, churn_probability, "
        f"model_name, 2, scored_at from {SCORES_TABLE}"
    )
    warehouse.execute(
        f"insert into {SCORES_TABLE} select customer_id, as_of_date, churn_probability, "
        f"model_name, 7, scored_at from {SCORES_TABLE} where model_version = 1"
    )
    report = check(warehouse, registry)

    by_version = {w.model_version: w for w in report.weeks}
    assert set(by_version) == {1, 2, 7}
    auc = by_version[1].roc_auc
    assert auc is not None and 0.80 - 0.05 <= auc < 0.95 - 0.05
    assert not by_version[1].is_degraded and by_version[2].is_degraded
    assert by_version[7].training["roc_auc"] is None and not by_version[7].is_degraded
    assert [r.split(" week")[0] for r in report.reasons] == ["churn v2"]
    assert any("v7 is not in the registry" in note for note in report.notes)


def test_runs_append_with_their_run_at(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y))])
    check(warehouse, registry)
    later = RUN_AT + timedelta(days=1)
    check(warehouse, registry, run_at=later)
    rows = stored(warehouse)
    assert len(rows) == 2 * len(METRICS)
    assert [r["run_at"] for r in rows[:: len(METRICS)]] == [RUN_AT, later]


def test_since_ignores_older_scores(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, shuffled(y)), (W12, 1, y, perfect(y))])
    report = check(warehouse, registry, since=W11)
    assert [w.week_start for w in report.weeks] == [W12] and not report.needs_retraining
    assert report.scored_rows == 400


def test_matured_scores_without_a_label_are_counted(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    tuesday = W10 + timedelta(days=1)  # not a cutoff of the labels mart
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y)), (tuesday, 1, y, perfect(y))], label_days=[W10])
    report = check(warehouse, registry)
    assert report.unlabelled_rows == 400 and report.weeks[0].n == 400


# -- nothing to evaluate yet: a message, not an exception -----------------------------------
def test_no_scores_table_is_a_message(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    report = check(warehouse, registry)
    assert report.message is not None and SCORES_TABLE in report.message
    assert not report.needs_retraining and report.weeks == [] and report.reasons == []
    assert report.message in report.summary() and report.message in report.markdown()
    assert not warehouse.table_exists(PERFORMANCE_TABLE)


def test_nothing_matured_is_a_message(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    y = _labels(400, 1)
    load(warehouse, [(AS_OF - timedelta(days=3), 1, y, perfect(y))])
    report = check(warehouse, registry)
    assert report.message is not None and "no labels have matured yet" in report.message
    assert f"{HORIZON} days" in report.message and not report.needs_retraining
    assert report.scored_rows == 400 and report.matured_rows == 0


def test_no_labels_for_matured_scores_is_a_message(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y))], label_days=[])
    report = check(warehouse, registry)
    assert report.message is not None and "none has a label" in report.message
    assert report.matured_rows == 400 and not report.needs_retraining


def test_missing_labels_table_is_a_message(
    warehouse: DuckDBWarehouse, registry: ModelRegistry
) -> None:
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y))])
    warehouse.execute(f"drop table {CHURN_TRAINING_TABLE}")
    report = check(warehouse, registry)
    assert report.message is not None and CHURN_TRAINING_TABLE in report.message


# -- broken input: PerformanceError ---------------------------------------------------------
@pytest.mark.parametrize(
    ("table", "column"),
    [(SCORES_TABLE, "churn_probability"), (CHURN_TRAINING_TABLE, "is_churned")],
)
def test_missing_columns_raise(
    warehouse: DuckDBWarehouse, registry: ModelRegistry, table: str, column: str
) -> None:
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y))])
    warehouse.execute(f"alter table {table} drop column {column}")
    with pytest.raises(PerformanceError, match=f"{table} lacks columns \\['{column}'\\]"):
        check(warehouse, registry)


def test_scores_outside_zero_one_raise(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y) * 2)])
    with pytest.raises(PerformanceError, match=r"probabilities in \[0, 1\]"):
        check(warehouse, registry)


def test_null_labels_raise(warehouse: DuckDBWarehouse, registry: ModelRegistry) -> None:
    y = _labels(400, 1)
    load(warehouse, [(W10, 1, y, perfect(y))])
    warehouse.execute(f"update {CHURN_TRAINING_TABLE} set is_churned = null")
    with pytest.raises(PerformanceError, match="is_churned has 400 null values"):
        check(warehouse, registry)
