"""The whole system on a tiny simulated business: simulate -> ingest -> dbt build -> train ->
register -> score -> materialize -> drift check -> API, on DuckDB (through the Prefect flows)
and on PostgreSQL (through the plain pipeline functions)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from retailml import pipeline, runtime
from retailml.config import Settings

TINY = pipeline.SimulateOptions(
    days=200, initial_customers=400, new_customers_per_day=2.0, n_products=40
)


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def _count(settings: Settings, sql: str) -> int:
    warehouse = runtime.open_warehouse(settings)
    try:
        return int(warehouse.scalar(sql))
    finally:
        warehouse.close()


def _check_warehouse(settings: Settings) -> None:
    for table in (
        "raw.order_lines",
        "core.fct_order_lines",
        "core.dim_customers",
        "marts.mart_daily_sales",
        "marts.ml_churn_training",
        "marts.ml_customer_features",
        "mlops.churn_scores",
        "mlops.demand_forecasts",
        "mlops.drift_results",
    ):
        assert _count(settings, f"select count(*) from {table}") > 0, f"{table} is empty"
    # every scored row names the production model version
    assert (
        _count(settings, "select count(*) from mlops.churn_scores where model_version is null") == 0
    )
    scored = _count(settings, "select count(distinct customer_id) from mlops.churn_scores")
    featured = _count(settings, "select count(*) from marts.ml_customer_features")
    assert scored == featured
    # PII never leaves staging in clear
    columns = runtime.open_warehouse(settings)
    try:
        dim_columns = set(columns.columns("core.dim_customers"))
    finally:
        columns.close()
    assert not {"email", "first_name", "last_name", "street"} & dim_columns


def _check_api(settings: Settings) -> None:
    from retailml.serving.app import create_app
    from retailml.serving.auth import create_key

    token = create_key(settings.api_keys_path, "e2e", ("predict",))
    warehouse = runtime.open_warehouse(settings)
    try:
        customer = warehouse.scalar(
            "select customer_id from marts.ml_customer_features order by customer_id limit 1"
        )
    finally:
        warehouse.close()
    client = create_app(settings).test_client()
    assert client.post("/v1/churn/score", json={"customer_id": customer}).status_code == 401
    response = client.post(
        "/v1/churn/score",
        json={"customer_id": customer, "explain": True},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert 0.0 <= body["score"] <= 1.0
    production = _count(
        settings,
        "select version from mlops.model_registry where name = 'churn' and alias = 'production'",
    )
    assert body["model"] == {"name": "churn", "version": production}
    assert body["explanation"], body
    assert client.get("/readyz").status_code == 200


@pytest.mark.slow
def test_pipeline_on_duckdb_through_prefect(settings: Settings, prefect_harness: None) -> None:
    from flows.pipeline import daily_flow

    pipeline.simulate(settings, TINY)
    daily_flow(settings)
    _check_warehouse(settings)
    lines_before = _count(settings, "select count(*) from raw.order_lines")
    facts_before = _count(settings, "select count(*) from core.fct_order_lines")

    # one new day lands: the next daily run loads only it and the facts grow
    pipeline.simulate(settings, pipeline.SimulateOptions(days=1))  # continues the saved business
    daily_flow(settings)
    assert _count(settings, "select count(*) from raw.order_lines") > lines_before
    assert _count(settings, "select count(*) from core.fct_order_lines") > facts_before
    # and running ingestion again loads nothing
    assert pipeline.ingest(settings).rows_loaded == 0
    _check_api(settings)


@pytest.mark.slow
@pytest.mark.postgres
def test_pipeline_on_postgres(pg_settings: Settings, tmp_path: Path) -> None:
    pipeline.simulate(pg_settings, TINY)
    pipeline.daily(pg_settings)
    _check_warehouse(pg_settings)
    _check_api(pg_settings)
