"""Train -> gate -> score -> drift, and demand forecasting, on DuckDB and PostgreSQL with
synthetic marts (same columns and types as the dbt models)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from retailml.features.spec import (
    CHURN_TRAINING_TABLE,
    CUSTOMER_FEATURES_TABLE,
    DEMAND_DAILY_TABLE,
    FEATURES,
)
from retailml.monitoring.drift import DRIFT_RESULTS_TABLE, check_drift
from retailml.registry import LocalArtifactStore, ModelRegistry
from retailml.training.churn import train_churn
from retailml.training.common import feature_frame
from retailml.training.demand import BACKTEST_TABLE, FORECASTS_TABLE, train_demand
from retailml.training.scoring import SCORES_TABLE, ScoringError, score_customers
from retailml.training.synthetic import (
    make_churn_training,
    make_customer_features,
    make_demand_daily,
)
from retailml.warehouse.base import Warehouse
from retailml.warehouse.duckdb import DuckDBWarehouse
from retailml.warehouse.postgres import PostgresWarehouse

HORIZON = 30
CUSTOMERS = 800


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    if request.param == "duckdb":
        wh: Warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb")
    else:
        server = request.getfixturevalue("postgres_server")
        database = request.getfixturevalue("pg_database")
        wh = PostgresWarehouse(
            f"host={server['host']} port={server['port']} user={server['user']} dbname={database}"
        )
    yield wh
    wh.close()


@pytest.fixture
def registry(warehouse: Warehouse, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(warehouse, LocalArtifactStore(tmp_path / "models"), code_version="t")


def _load_marts(warehouse: Warehouse) -> None:
    warehouse.replace_arrow(CHURN_TRAINING_TABLE, make_churn_training(CUSTOMERS, 10))
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, make_customer_features(1_500))


def test_churn_train_gate_score_and_drift(warehouse: Warehouse, registry: ModelRegistry) -> None:
    _load_marts(warehouse)
    messages: list[str] = []
    result = train_churn(warehouse, registry, horizon_days=HORIZON, progress=messages.append)

    # Trained, registered, promoted (first version), and better than the recency baseline.
    assert result.promotion.promoted and result.version.alias == "production"
    metrics = result.version.metrics
    assert metrics["roc_auc"] > metrics["baseline_recency_roc_auc"] + 0.03
    assert 0.0 < metrics["brier"] < 0.25 and 0.0 < metrics["f1"] <= 1.0
    assert metrics["holdout"]["cutoff_dates"] == ["2024-04-28", "2024-05-12"]
    # The horizon gap: training cutoffs end >= 30 days before the first held-out cutoff.
    assert metrics["train"]["last_cutoff"] == "2024-03-17"
    fingerprint = result.version.training_fingerprint
    assert fingerprint["row_count"] == CUSTOMERS * 10 and len(fingerprint["content_sha256"]) == 64
    assert "marts.ml_churn_training" in fingerprint["query"]
    reference = fingerprint["feature_reference"]  # serving's explanation baseline
    assert set(reference) == set(FEATURES) and reference["loyalty_tier"] == "bronze"
    assert 0 < reference["recency_days"] < 100
    assert messages and any("registering" in m for m in messages)

    # Held-out evaluation: calibration, the recency rule, importance, fairness slices.
    assert len(metrics["calibration"]) == 10 and metrics["expected_calibration_error"] < 0.1
    assert metrics["baseline"]["roc_auc"] == metrics["baseline_recency_roc_auc"]
    assert metrics["brier"] < metrics["brier_base_rate"]
    assert set(metrics["permutation_importance"]) == set(FEATURES)
    fairness = metrics["fairness"]
    assert set(fairness["slices"]) == {"country", "signup_channel", "loyalty_tier"}
    assert fairness["passed"] and "fairness" in (result.version.alias_reason or "")
    # Charts next to the artifact, linked from the row, verified when read.
    assert set(result.version.reports) == {
        "roc.png", "precision_recall.png", "calibration.png", "feature_importance.png"
    }  # fmt: skip
    assert registry.load_report("churn", "production", "roc.png")[:4] == b"\x89PNG"
    # No dbt manifest and no load ledger here (synthetic marts): recorded as such.
    assert fingerprint["dbt"] is None and fingerprint["raw_batches"]["ledger_entries"] == 0

    # Serving's call: the verified production pipeline on a DataFrame of FEATURES.
    loaded = registry.load("churn", "production")
    records = make_customer_features(3, seed=9).select(list(FEATURES)).to_pylist()
    proba = loaded.model.predict_proba(feature_frame(pd.DataFrame(records)))
    assert proba.shape == (3, 2) and list(loaded.model.classes_) == [0, 1]

    # Batch scoring: one row per customer, with the production version; re-scoring replaces.
    scored = score_customers(warehouse, registry, batch_rows=400)
    assert scored.rows == 1_500 and scored.model_version == result.version.version
    assert scored.as_of_dates == [date(2024, 6, 30)]
    score_customers(warehouse, registry, batch_rows=1_000)
    counts = warehouse.query_arrow(
        f"select count(*) as n, count(distinct customer_id) as customers, "
        f"min(model_version) as lo, max(model_version) as hi, "
        f"min(churn_probability) as p_min, max(churn_probability) as p_max from {SCORES_TABLE}"
    ).to_pylist()[0]
    assert counts["n"] == counts["customers"] == 1_500
    assert counts["lo"] == counts["hi"] == result.version.version
    assert 0.0 <= counts["p_min"] < counts["p_max"] <= 1.0

    # Drift: none on a fresh sample of the same population, flagged on a shifted one.
    calm = check_drift(warehouse, registry)
    assert calm.model_version == result.version.version and not calm.drifted_features
    assert calm.predictions is None and "no prediction log" in calm.prediction_note
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, make_customer_features(1_500, drift=True))
    shifted = check_drift(warehouse, registry)
    assert {"recency_days", "country"} <= set(shifted.drifted_features) and shifted.is_drifted
    assert shifted.needs_retraining and any("country" in r for r in shifted.reasons)
    rows = warehouse.query_arrow(
        f"select feature, kind, statistic, value, p_adjusted, is_drifted, current_rows "
        f"from {DRIFT_RESULTS_TABLE}"
    ).to_pylist()
    assert len(rows) == 2 * (len(FEATURES) + 1)
    assert all(
        np.isfinite(r["value"]) and 0 <= r["p_adjusted"] <= 1
        for r in rows
        if r["kind"] != "dataset"
    )
    assert sum(r["feature"] == "__dataset__" and r["is_drifted"] for r in rows) == 1
    assert {r["current_rows"] for r in rows} == {1_500}

    # Prediction drift: the scores served for this version against its training scores.
    _log_predictions(
        warehouse, registry, result.version.version, make_customer_features(400, seed=5)
    )
    served = check_drift(warehouse, registry)
    assert served.predictions is not None and served.predictions.current_rows == 400
    assert served.predictions.kind == "prediction" and served.predictions.psi is not None
    _log_predictions(
        warehouse, registry, result.version.version, make_customer_features(400, seed=6), 0.95
    )
    skewed = check_drift(warehouse, registry)
    assert skewed.prediction_drifted and any(r.startswith("served scores") for r in skewed.reasons)


def _log_predictions(
    warehouse: Warehouse,
    registry: ModelRegistry,
    version: int,
    features: pa.Table,
    score: float | None = None,
) -> None:
    """Rows in the prediction log as the API writes them: the production model's scores
    (or a constant ``score``, a model gone wrong), just now."""
    from datetime import UTC, datetime

    from retailml.serving.prediction_log import PREDICTION_LOG_SCHEMA, PREDICTION_LOG_TABLE

    model = registry.load("churn", version).model
    frame = feature_frame(features.select(list(FEATURES)).to_pandas())
    scores = model.predict_proba(frame)[:, 1] if score is None else np.full(len(frame), score)
    n = len(frame)
    now = datetime.now(UTC)
    warehouse.replace_arrow(
        PREDICTION_LOG_TABLE,
        pa.table(
            {
                "request_id": [f"r{i}" for i in range(n)],
                "predicted_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
                "model_name": ["churn"] * n,
                "model_version": pa.array([version] * n, pa.int64()),
                "customer_id": features.column("customer_id"),
                "features": ["{}"] * n,
                "score": pa.array(scores, pa.float64()),
                "latency_ms": pa.array([1.0] * n, pa.float64()),
            },
            schema=PREDICTION_LOG_SCHEMA,
        ),
    )


def test_retraining_goes_through_the_gate(warehouse: Warehouse, registry: ModelRegistry) -> None:
    _load_marts(warehouse)
    first = train_churn(warehouse, registry, horizon_days=HORIZON)
    # Same data, same seed: the same model. With a margin it cannot win ...
    second = train_churn(warehouse, registry, horizon_days=HORIZON, margin=0.01)
    assert not second.promotion.promoted and second.version.alias == "candidate"
    evaluation = second.version.metrics["champion_evaluations"][str(first.version.version)]
    assert evaluation["roc_auc"] == pytest.approx(second.metrics["roc_auc"])
    assert "not better" in (second.version.alias_reason or "")
    assert registry.get("churn", "production").version == first.version.version
    # ... and a tie without a margin promotes the fresher model, archiving the old one.
    third = train_churn(warehouse, registry, horizon_days=HORIZON)
    assert third.promotion.promoted
    assert registry.get("churn", first.version.version).alias == "archived"
    assert (
        second.version.training_fingerprint["content_sha256"]
        == third.version.training_fingerprint["content_sha256"]
    )


def test_the_fairness_limit_blocks_promotion(warehouse: Warehouse, registry: ModelRegistry) -> None:
    # 4,000 held-out rows: every country slice is large enough to compare
    warehouse.replace_arrow(CHURN_TRAINING_TABLE, make_churn_training(2_000, 10, seed=5))
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, make_customer_features(500))
    result = train_churn(warehouse, registry, horizon_days=HORIZON, max_fairness_gap=0.0)
    assert result.metrics["fairness"]["gaps"]["country"]["roc_auc"]["groups"] == 4
    assert not result.promotion.promoted and result.version.alias == "candidate"
    assert "fairness limit" in (result.version.alias_reason or "")
    assert result.metrics["fairness"]["passed"] is False
    with pytest.raises(ScoringError, match="no production version"):
        score_customers(warehouse, registry)


def test_scoring_without_a_production_model_is_a_clear_error(
    warehouse: Warehouse, registry: ModelRegistry
) -> None:
    _load_marts(warehouse)
    with pytest.raises(ScoringError, match="no production version"):
        score_customers(warehouse, registry)
    assert not warehouse.table_exists(SCORES_TABLE)


@pytest.mark.slow
def test_demand_forecasts(warehouse: Warehouse, registry: ModelRegistry) -> None:
    warehouse.replace_arrow(DEMAND_DAILY_TABLE, make_demand_daily(days=300))
    result = train_demand(warehouse, registry, horizon_days=14)
    assert result.promotion.promoted and result.version.kind == "statsmodels"
    metrics = result.version.metrics
    assert set(metrics["per_category"]) == {"books", "garden", "toys"}
    assert metrics["mase"] < metrics["mase_seasonal_naive"]  # beats seasonal naive
    forecasts = warehouse.query_arrow(
        f"select category, horizon_day, units_forecast, lower_95, upper_95, model_version "
        f"from {FORECASTS_TABLE}"
    ).to_pandas()
    assert len(forecasts) == 3 * 14
    assert (forecasts["model_version"] == result.version.version).all()
    assert (forecasts["lower_95"] <= forecasts["units_forecast"]).all()
    assert (forecasts["units_forecast"] <= forecasts["upper_95"]).all()
    level = forecasts.groupby("category")["units_forecast"].mean()
    assert level["books"] < level["garden"] < level["toys"]  # synthetic levels 20, 40, 60
    # The backtest behind the MASE is in the warehouse, one row per forecast day.
    backtest = warehouse.query_arrow(
        f"select * from {BACKTEST_TABLE} where model_version = ?", [result.version.version]
    ).to_pandas()
    origins = metrics["backtest"]["origins"]
    assert len(backtest) == 3 * len(origins) * 14 and len(origins) >= 5
    assert (backtest["lower_95"] <= backtest["upper_95"]).all()
    assert 0.7 < metrics["interval_coverage_95"] <= 1.0
    assert set(result.version.reports) == {"forecast_vs_actual.png"}


@pytest.mark.postgres
def test_fingerprint_is_the_same_on_duckdb_and_postgres(
    postgres_server: dict[str, object], pg_database: str, tmp_path: Path
) -> None:
    data = make_churn_training(300, 8, seed=11)
    fingerprints = []
    for wh in (
        DuckDBWarehouse(tmp_path / "wh.duckdb"),
        PostgresWarehouse(
            f"host={postgres_server['host']} port={postgres_server['port']} "
            f"user={postgres_server['user']} dbname={pg_database}"
        ),
    ):
        wh.replace_arrow(CHURN_TRAINING_TABLE, data)
        registry = ModelRegistry(wh, LocalArtifactStore(tmp_path / wh.kind), code_version="t")
        fingerprints.append(
            train_churn(wh, registry, horizon_days=HORIZON).version.training_fingerprint
        )
        wh.close()
    assert fingerprints[0]["content_sha256"] == fingerprints[1]["content_sha256"]


def test_a_monitor_run_writes_its_tables_and_charts_what_drifted(
    warehouse: Warehouse, registry: ModelRegistry, tmp_path: Path
) -> None:
    from retailml.monitoring.monitor import run_monitor
    from retailml.monitoring.performance import PERFORMANCE_TABLE

    _load_marts(warehouse)
    train_churn(warehouse, registry, horizon_days=HORIZON)
    score_customers(warehouse, registry)
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, make_customer_features(1_500, drift=True))
    report = run_monitor(warehouse, registry, horizon_days=HORIZON, charts_dir=tmp_path / "c")
    assert report.needs_retraining and report.reasons == report.drift.reasons
    # the scores are of 2024-06-30, whose labels the mart does not hold: reported, not judged
    assert not report.performance.needs_retraining and report.performance.message
    names = {path.name for path in report.charts}
    assert {f"drift_{f}.png" for f in report.drifted_features} == names
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in report.charts)
    markdown = report.markdown()
    assert "## Drift:" in markdown and "## Model performance:" in markdown
    assert "drift_country.png" in markdown
    assert not warehouse.table_exists(PERFORMANCE_TABLE)  # nothing matured, nothing written
