"""Training on marts built by the real pipeline (simulate -> ingest -> dbt build -> train ->
score, embedded DuckDB): lineage from a score back to the dbt models and the raw batches,
the point-in-time guarantee of the built mart, and the charts attached to a Prefect run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from retailml import pipeline, runtime
from retailml.config import Settings
from retailml.evaluation import check_point_in_time
from retailml.registry import file_sha256, trace_prediction
from retailml.sources import local_services

TINY = pipeline.SimulateOptions(
    days=200, initial_customers=400, new_customers_per_day=2.0, n_products=40
)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, local_sources: local_services.LocalEndpoints
) -> Iterator[Settings]:
    """A tiny business through ingest, dbt build, training (both models) and scoring."""
    unique = uuid.uuid4().hex[:8]
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("pipeline") / "state",
        s3_endpoint_url=local_sources.s3_endpoint_url,
        mongo_uri=local_sources.mongo_uri,
        s3_bucket=f"landing-{unique}",
        mongo_database=f"shop_{unique}",
        _env_file=None,  # type: ignore[call-arg]
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", local_services.LOCAL_AWS_KEY)
        patch.setenv("AWS_SECRET_ACCESS_KEY", local_services.LOCAL_AWS_KEY)
        pipeline.simulate(settings, TINY)
        pipeline.ingest(settings)
        pipeline.transform(settings)
        pipeline.train(settings)
        pipeline.score(settings)
        yield settings


def _manifest(settings: Settings) -> Path:
    return settings.data_dir / "dbt" / "target" / "manifest.json"


def test_a_score_walks_back_to_the_dbt_models_and_the_raw_batches(built: Settings) -> None:
    warehouse = runtime.open_warehouse(built)
    try:
        registry = runtime.open_registry(built, warehouse)
        customer = warehouse.scalar("select min(customer_id) from mlops.churn_scores")
        [trace] = trace_prediction(
            warehouse, registry, "mlops.churn_scores", {"customer_id": customer},
            current_manifest=_manifest(built),
        )  # fmt: skip
        ledger = warehouse.query_arrow(
            "select batch_id, target_table from raw._load_ledger where status = 'loaded'"
        ).to_pylist()
    finally:
        warehouse.close()
    assert trace.model.alias == "production" and trace.prediction["customer_id"] == customer
    assert trace.training_table == "marts.ml_churn_training" and trace.training_rows > 0
    assert trace.dbt_manifest_sha256 == file_sha256(_manifest(built))
    assert trace.manifest_is_current is True
    assert trace.dbt_models[0] == "model.retailml.ml_churn_training"
    assert {"model.retailml.fct_order_lines", "model.retailml.stg_shop__order_lines"} <= set(
        trace.dbt_models
    )
    assert "source.retailml.shop.order_lines" in trace.dbt_sources
    # every loaded object of the raw tables behind the mart, in the ingest's batches
    behind = [
        r
        for r in ledger
        if r["target_table"] in trace.model.training_fingerprint["dbt"]["raw_tables"]
    ]
    assert len(trace.raw_objects) == len(behind) > 100  # one per daily export, and Mongo
    assert trace.raw_batch_ids == sorted({r["batch_id"] for r in behind})


def test_the_demand_forecasts_have_lineage_too(built: Settings) -> None:
    warehouse = runtime.open_warehouse(built)
    try:
        registry = runtime.open_registry(built, warehouse)
        traces = trace_prediction(warehouse, registry, "mlops.demand_forecasts", {"horizon_day": 1})
    finally:
        warehouse.close()
    assert traces and {t.model.name for t in traces} == {"demand"}
    assert traces[0].dbt_models[0] == "model.retailml.ml_demand_daily"
    assert traces[0].raw_objects and traces[0].model.reports


def test_a_new_batch_is_in_the_next_version_only(built: Settings) -> None:
    warehouse = runtime.open_warehouse(built)
    try:
        before = set(
            warehouse.query_arrow("select distinct batch_id from raw._load_ledger")
            .column(0)
            .to_pylist()
        )
    finally:
        warehouse.close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", local_services.LOCAL_AWS_KEY)
        patch.setenv("AWS_SECRET_ACCESS_KEY", local_services.LOCAL_AWS_KEY)
        pipeline.simulate(built, pipeline.SimulateOptions(days=1))
        pipeline.ingest(built)
        pipeline.transform(built)
        new = pipeline.train(built, models=("churn",))["churn"].version
    warehouse = runtime.open_warehouse(built)
    try:
        after = set(
            warehouse.query_arrow("select distinct batch_id from raw._load_ledger")
            .column(0)
            .to_pylist()
        )
        registry = runtime.open_registry(built, warehouse)
        old = registry.get("churn", new.version - 1)
    finally:
        warehouse.close()
    [added] = after - before
    assert added in new.training_fingerprint["raw_batches"]["batch_ids"]
    assert added not in old.training_fingerprint["raw_batches"]["batch_ids"]
    assert new.training_fingerprint["dbt_manifest_sha256"] == file_sha256(_manifest(built))


def test_point_in_time_holds_on_the_built_mart_and_a_leak_is_caught(built: Settings) -> None:
    warehouse = runtime.open_warehouse(built)
    try:
        report = check_point_in_time(warehouse, customers=150)
        assert report.passed and report.rows_checked > 500, report
        # A leaky copy: frequency_90d also counts the orders placed on the cutoff day itself.
        warehouse.execute(
            """
            create or replace table marts.ml_churn_training_leaky as
            select
                training.* replace (training.frequency_90d + coalesce(same_day.orders, 0)
                    as frequency_90d),
                coalesce(same_day.orders, 0) > 0 as is_leaked
            from marts.ml_churn_training as training
            left join (
                select customer_id, order_date, count(distinct order_id) as orders
                from core.fct_order_lines
                where is_product_line and not is_return
                group by customer_id, order_date
            ) as same_day
                on same_day.customer_id = training.customer_id
                and same_day.order_date = training.cutoff_date
            """
        )
        leaked = warehouse.scalar(
            "select count(*) from marts.ml_churn_training_leaky where is_leaked"
        )
        customers = warehouse.scalar(
            "select count(distinct customer_id) from marts.ml_churn_training"
        )
        leaky = check_point_in_time(
            warehouse, table="marts.ml_churn_training_leaky", customers=customers
        )
    finally:
        warehouse.close()
    assert leaked > 0 and not leaky.passed
    assert leaky.violations == leaked
    assert {e["feature"] for e in leaky.examples} == {"frequency_90d"}


@pytest.fixture
def prefect_harness(tmp_path: Path) -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path / "prefect")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def test_the_train_flow_attaches_metrics_and_charts_to_its_run(
    built: Settings, prefect_harness: None
) -> None:
    from prefect.client.orchestration import get_client

    from flows.pipeline import train_flow

    train_flow(built)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    by_key = {a.key: a for a in artifacts}
    assert {"churn-model", "churn-roc", "churn-calibration", "churn-feature-importance",
            "churn-precision-recall", "demand-model", "demand-forecast-vs-actual"} <= set(by_key)  # fmt: skip
    assert "roc_auc" in str(by_key["churn-model"].data)
    assert str(by_key["churn-roc"].data).startswith("[churn v")
