"""The whole system on a tiny simulated business: simulate -> ingest -> dbt build -> train ->
register -> score -> materialize -> drift check -> retrain check -> API, on DuckDB (through
the Prefect flows, with two overlapping daily runs and a backfill) and on PostgreSQL (through
the plain pipeline functions)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from retailml import pipeline, runtime
from retailml.config import Settings
from retailml.orchestration import PipelineBusyError, lock_history
from retailml.sources import local_services
from retailml.warehouse.base import quote_ident

REPO = Path(__file__).resolve().parents[2]

TINY = pipeline.SimulateOptions(
    days=200, initial_customers=400, new_customers_per_day=2.0, n_products=40
)


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


# Tables whose content a backfill must restore exactly. Load and run metadata differ by
# design (batch ids, extraction and transformation instants, scoring time) and are left out.
STATE_TABLES = (
    "raw.order_lines", "raw.customers", "raw.products", "core.fct_order_lines",
    "core.fct_orders", "core.dim_customers", "core.dim_products", "marts.mart_daily_sales",
    "marts.ml_customer_features", "marts.ml_churn_training", "marts.ml_demand_daily",
    "mlops.churn_scores",
)  # fmt: skip
VOLATILE = {"batch_id", "extracted_at", "transformed_at", "scored_at"}


def _canonical(value: Any) -> str:
    # sums of doubles depend on the order the warehouse adds them in (parallel aggregation)
    return repr(round(value, 6) if isinstance(value, float) else value)


def _state(settings: Settings) -> dict[str, list[tuple[str, ...]]]:
    warehouse = runtime.open_warehouse(settings)
    try:
        state = {}
        for table in STATE_TABLES:
            columns = [
                c for c in warehouse.columns(table)
                if not c.startswith(("_", "dbt_")) and c not in VOLATILE
            ]  # fmt: skip
            rows = warehouse.query_arrow(
                f"select {', '.join(quote_ident(c) for c in columns)} from {table}"
            ).to_pylist()
            state[table] = sorted(tuple(_canonical(row[c]) for c in columns) for row in rows)
        return state
    finally:
        warehouse.close()


def _plain_python_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The environment of a plain ``python -m flows.pipeline`` run on these settings: no
    Prefect server configured (it starts its own temporary one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "plain-prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        PYTHONPATH=str(REPO),
        RETAILML_DATA_DIR=str(settings.data_dir),
        RETAILML_S3_ENDPOINT_URL=str(settings.s3_endpoint_url),
        RETAILML_S3_BUCKET=settings.s3_bucket,
        RETAILML_MONGO_URI=str(settings.mongo_uri),
        RETAILML_MONGO_DATABASE=settings.mongo_database,
        AWS_ACCESS_KEY_ID=local_services.LOCAL_AWS_KEY,
        AWS_SECRET_ACCESS_KEY=local_services.LOCAL_AWS_KEY,
    )
    return env


def _wait_until_holding(settings: Settings, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        events = [e["event"] for e in lock_history(settings) if e["pid"] == process.pid]
        if events == ["acquired"]:
            return
        if process.poll() is not None:
            pytest.fail(
                f"the plain-Python daily run exited ({process.returncode}) before or without holding the lock"
            )
        time.sleep(0.2)
    pytest.fail("the plain-Python daily run did not take the pipeline lock within 600 s")


@pytest.mark.slow
def test_pipeline_on_duckdb_through_prefect(
    settings: Settings, prefect_harness: str, tmp_path: Path
) -> None:
    from flows.pipeline import backfill_flow, daily_flow, retrain_check_flow

    pipeline.simulate(settings, TINY)
    first: dict[str, Any] = daily_flow(settings)
    _check_warehouse(settings)
    churn = first["train"]["churn"]  # nothing in production yet: trained through the gate
    assert churn.retrained and churn.reasons == ("no production version",)
    assert first["train"]["demand"].version.version == 1  # the forecast is refitted daily
    assert first["transform"].counts["test"].get("pass", 0) > 100
    lines_before = _count(settings, "select count(*) from raw.order_lines")
    facts_before = _count(settings, "select count(*) from core.fct_order_lines")

    # One new day lands. A daily run as plain Python in another process (its own temporary
    # Prefect server) holds the pipeline lock: a second daily run fails at once naming it,
    # a retrain check waits for it; never do two run at the same time.
    pipeline.simulate(settings, pipeline.SimulateOptions(days=1))  # continues the saved business
    other = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "daily"],
        cwd=REPO,
        env=_plain_python_env(settings, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "plain-daily.log").open("wb"),
    )
    try:
        _wait_until_holding(settings, other)
        busy = daily_flow(settings, lock_wait_seconds=0, return_state=True)
        assert busy.is_failed()
        with pytest.raises(PipelineBusyError, match=f"pid {other.pid} .*flow run daily/"):
            busy.result()
        waited = retrain_check_flow(settings, lock_wait_seconds=900)
        assert other.wait(timeout=600) == 0, (tmp_path / "plain-daily.log").read_text()[-3000:]
    finally:
        if other.poll() is None:
            other.kill()
    assert not waited["retrain"].retrained  # the daily run before it left nothing to do
    events = [(e["event"], e["pid"], e["at"]) for e in lock_history(settings)]
    assert [(event, pid) for event, pid, _ in events] == [
        ("acquired", os.getpid()), ("released", os.getpid()),  # the first daily run
        ("acquired", other.pid), ("released", other.pid),  # the plain-Python one
        ("acquired", os.getpid()), ("released", os.getpid()),  # the retrain check, after it
    ]  # fmt: skip
    assert events[3][2] <= events[4][2]
    assert _count(settings, "select count(*) from raw.order_lines") > lines_before
    assert _count(settings, "select count(*) from core.fct_order_lines") > facts_before
    # and running ingestion again loads nothing
    assert pipeline.ingest(settings).rows_loaded == 0

    # Backfill: two days are lost downstream of S3 (raw lines and facts gone); re-extracting
    # them gives back the warehouse of the original runs.
    original = _state(settings)
    warehouse = runtime.open_warehouse(settings)
    try:
        newest: date = warehouse.scalar("select max(order_date) from core.fct_order_lines")
        start, end = newest - timedelta(days=12), newest - timedelta(days=11)
        lost = [f"%/dt={start}/%", f"%/dt={end}/%"]
        # raw rows lead to their S3 object through the load ledger (``_load_id``)
        lost_loads = (
            "select load_id from raw._load_ledger where object_key like ? or object_key like ?"
        )
        with warehouse.transaction():
            warehouse.execute(
                "delete from core.fct_order_lines where order_id in (select order_id from "
                f"raw.order_lines where _load_id in ({lost_loads}))",
                lost,
            )
            warehouse.execute(f"delete from raw.order_lines where _load_id in ({lost_loads})", lost)
    finally:
        warehouse.close()
    damaged = _state(settings)
    assert len(damaged["raw.order_lines"]) < len(original["raw.order_lines"])
    assert len(damaged["core.fct_order_lines"]) < len(original["core.fct_order_lines"])
    result = backfill_flow(start, end, settings)
    assert result["backfill"].rows_loaded > 0 and result["score"].model_version >= 1
    restored = _state(settings)
    for table in STATE_TABLES:
        assert restored[table] == original[table], table
    _check_api(settings)


@pytest.mark.slow
@pytest.mark.postgres
def test_pipeline_on_postgres(pg_settings: Settings, tmp_path: Path) -> None:
    pipeline.simulate(pg_settings, TINY)
    pipeline.daily(pg_settings)
    _check_warehouse(pg_settings)
    _check_api(pg_settings)
