"""The Prefect flows against real servers (one Prefect test harness for the session): retries
only on transient I/O failures, a failing dbt test failing the transform flow by name, drift
-> retrain -> promotion gate, partitioned scoring on a local Dask cluster, and the locks that
keep runs apart (PostgreSQL advisory lock, Prefect global concurrency limit)."""

from __future__ import annotations

import contextvars
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from retailml import pipeline, runtime
from retailml.config import Settings
from retailml.features.spec import CHURN_TRAINING_TABLE, CUSTOMER_FEATURES_TABLE
from retailml.orchestration import PipelineBusyError, lock_history, pipeline_lock
from retailml.training.synthetic import make_churn_training, make_customer_features

REPO = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------
def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _logs(flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with _client() as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


def _task_runs(flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client() as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def _in_context(target: Any) -> threading.Thread:
    """A thread that sees this thread's Prefect settings (the harness's API URL)."""
    context = contextvars.copy_context()
    return threading.Thread(target=context.run, args=(target,), daemon=True)


def _write(settings: Settings, table: str, data: pa.Table) -> None:
    warehouse = runtime.open_warehouse(settings)
    try:
        warehouse.replace_arrow(table, data)
    finally:
        warehouse.close()


def _query(settings: Settings, sql: str) -> list[dict[str, Any]]:
    warehouse = runtime.open_warehouse(settings)
    try:
        return warehouse.query_arrow(sql).to_pylist()
    finally:
        warehouse.close()


# -- retries: transient I/O failures only -----------------------------------------------------
def test_an_io_task_retries_a_transient_failure_and_not_a_deterministic_one(
    settings: Settings, prefect_harness: str
) -> None:
    from moto.server import ThreadedMotoServer
    from prefect import flow

    import flows.pipeline as flows
    from retailml.sources import local_services

    port = local_services.free_port()
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}"})
    # the production policy (3 retries, transient only, jitter) with 6 s delays, not 10/20/40 s
    quick_ingest = flows.ingest_task.with_options(retry_delay_seconds=[6, 6, 6])

    @flow(name="retry-probe")
    def probe(settings: Settings) -> Any:
        return quick_ingest(settings)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    def start_s3_after_the_first_failed_attempt() -> None:
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            TaskRunFilter,
            TaskRunFilterState,
            TaskRunFilterStateName,
        )

        states = TaskRunFilterStateName(any_=["AwaitingRetry", "Retrying"])
        deadline = time.monotonic() + 120
        with _client() as client:
            while time.monotonic() < deadline:
                waiting = client.read_task_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["retry-probe"])),
                    task_run_filter=TaskRunFilter(state=TaskRunFilterState(name=states)),
                )
                if waiting:
                    break
                time.sleep(0.2)
        server.start()
        runtime.open_object_store(down, create_bucket=True)  # the bucket the exports land in

    starter = _in_context(start_s3_after_the_first_failed_attempt)
    starter.start()
    try:
        state = probe(down, return_state=True)
        starter.join(timeout=150)
        assert state.is_completed(), state
        assert state.result().rows_loaded == 0  # empty bucket and database: nothing to load
        (ingest_run,) = _task_runs(state.state_details.flow_run_id)
        assert ingest_run.run_count >= 2  # failed while S3 was down, succeeded after
        logs = _logs(state.state_details.flow_run_id)
        assert any("is transient: retrying with backoff" in m for m in logs), logs

        # a deterministic failure (a bucket that does not exist) fails at the first attempt
        missing = down.model_copy(update={"s3_bucket": "no-such-bucket"})
        state = probe(missing, return_state=True)
        assert state.is_failed()
        (ingest_run,) = _task_runs(state.state_details.flow_run_id)
        assert ingest_run.run_count == 1
        assert any("not transient: no retry" in m for m in _logs(state.state_details.flow_run_id))
    finally:
        starter.join(timeout=150)
        server.stop()


# -- a failing dbt test fails the flow, by name ----------------------------------------------
def test_a_failing_dbt_test_fails_the_transform_flow_naming_it(
    settings: Settings, prefect_harness: str
) -> None:
    from flows.pipeline import transform_flow
    from retailml.transforms.dbt import DbtError

    pipeline.simulate(
        settings,
        pipeline.SimulateOptions(
            days=3, initial_customers=30, new_customers_per_day=1.0, n_products=16
        ),
    )
    # the source sends a loyalty tier the shop does not have
    customers = runtime.open_mongo(settings).customers
    document = customers.find_one({}, sort=[("_id", 1)])
    customers.insert_one({**document, "_id": "C9999999", "loyalty_tier": "platinum"})
    pipeline.ingest(settings)

    state = transform_flow(settings, select="stg_shop__customers", return_state=True)
    assert state.is_failed()
    with pytest.raises(DbtError) as caught:
        state.result()
    test_name = "accepted_values_stg_shop__customers_loyalty_tier__bronze__silver__gold"
    assert test_name in str(caught.value)
    assert [f for f in caught.value.failures if test_name in f]
    assert all(".stg_shop__customers_loyalty_tier" not in f for f in caught.value.failures[1:])
    logs = _logs(state.state_details.flow_run_id)
    assert any(m.startswith("dbt failure: test.retailml." + test_name) for m in logs), logs
    assert any("1 test failed" in m for m in logs), logs  # and the other tests passed
    with _client() as client:  # deterministic: the flow ran once, no retry
        assert client.read_flow_run(state.state_details.flow_run_id).run_count == 1
    # dbt-duckdb's in-process database was closed: another process can open the warehouse
    opener = f"import duckdb; duckdb.connect({str(settings.duckdb_file)!r}).close()"
    assert subprocess.run([sys.executable, "-c", opener], capture_output=True).returncode == 0


# -- drift -> retrain -> promotion gate -------------------------------------------------------
def _drifted(features: pa.Table) -> pa.Table:
    """The customer features after the business changed: spend, frequency and recency up,
    a new country."""
    columns = {}
    for name in features.column_names:
        column = features.column(name)
        if name in ("monetary_90d", "monetary_365d", "avg_order_value_365d"):
            column = pc.multiply(column, 4.0)
        elif name in ("frequency_90d", "frequency_365d", "recency_days"):
            column = pc.add(pc.multiply(column, 2.0), 6.0)
        columns[name] = column
    return pa.table(columns)


def _churn_versions(settings: Settings) -> dict[int, tuple[str, str | None]]:
    rows = _query(
        settings,
        "select version, alias, alias_reason from mlops.model_registry where name = 'churn'",
    )
    return {r["version"]: (r["alias"], r["alias_reason"]) for r in rows}


def test_drift_retrains_and_only_the_promotion_gate_promotes(
    settings: Settings, prefect_harness: str
) -> None:
    from flows.pipeline import retrain_check_flow

    _write(settings, CHURN_TRAINING_TABLE, make_churn_training(500, 10))
    _write(settings, CUSTOMER_FEATURES_TABLE, make_customer_features(1_500))

    first = retrain_check_flow(settings)  # nothing in production: train, gate, promote
    assert "monitor" not in first and first["retrain"].promoted
    assert first["retrain"].reasons == ("no production version",)
    assert first["score"].model_version == 1
    assert _churn_versions(settings)[1][0] == "production"

    calm = retrain_check_flow(settings)  # the same population: no drift, nothing trained
    assert not calm["monitor"].needs_retraining and not calm["retrain"].retrained
    assert set(_churn_versions(settings)) == {1}

    _write(settings, CUSTOMER_FEATURES_TABLE, _drifted(make_customer_features(1_500)))
    stale = retrain_check_flow(settings)  # drift, but no newly labelled rows yet
    assert stale["monitor"].needs_retraining and stale["monitor"].reasons
    assert not stale["retrain"].retrained and "same 5000 rows" in stale["retrain"].note
    assert stale["retrain"].reasons == tuple(stale["monitor"].reasons)
    assert set(_churn_versions(settings)) == {1}

    # two more labelled cutoffs arrive: now the drift retrains, and the gate decides
    _write(settings, CHURN_TRAINING_TABLE, make_churn_training(500, 12))
    decided = retrain_check_flow(settings)
    outcome = decided["retrain"]
    assert outcome.retrained and outcome.reasons == tuple(decided["monitor"].reasons)
    decision = outcome.result.promotion
    assert decision.candidate_version == 2 and decision.production_version == 1
    assert decision.metric == "roc_auc" and decision.production_value is not None
    versions = _churn_versions(settings)
    assert versions[2] == ("production" if decision.promoted else "candidate", decision.reason)
    if decision.promoted:
        assert versions[1][0] == "archived" and versions[1][1].startswith("replaced by v2")
        assert decided["score"].model_version == 2
    else:
        assert versions[1][0] == "production" and "score" not in decided

    # a candidate that cannot clear the gate's margin is kept, with the reason recorded
    production_before = next(v for v, (alias, _) in versions.items() if alias == "production")
    kept = retrain_check_flow(settings, force=True, margin=1.0)
    outcome = kept["retrain"]
    assert outcome.retrained and not outcome.promoted and "forced" in outcome.reasons
    assert outcome.note.startswith("not better:") and "(margin 1)" in outcome.note
    versions = _churn_versions(settings)
    assert versions[3] == ("candidate", outcome.note)
    assert versions[production_before][0] == "production" and "score" not in kept

    from prefect.client.schemas.filters import ArtifactCollectionFilter

    with _client() as client:  # the decision is on the run as a markdown artifact
        (artifact,) = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key={"any_": ["churn-retrain"]})
        )
    assert "kept as candidate" in artifact.data and "Gate: not better:" in artifact.data


# -- partitioned scoring on a local Dask cluster ----------------------------------------------
def _register_production_model(settings: Settings) -> int:
    from sklearn.linear_model import LogisticRegression

    from retailml.training.churn import build_pipeline
    from retailml.training.common import feature_frame

    training = make_churn_training(300, 4, seed=3)
    model = build_pipeline(LogisticRegression(max_iter=1_000)).fit(
        feature_frame(training), training.column("is_churned").to_numpy(zero_copy_only=False)
    )
    warehouse = runtime.open_warehouse(settings)
    try:
        registry = runtime.open_registry(settings, warehouse)
        version = registry.register(
            "churn", model, kind="sklearn", params={}, metrics={}, fingerprint={}
        )
        registry.set_alias("churn", version.version, "production", "test model")
        return version.version
    finally:
        warehouse.close()


def _scores(settings: Settings) -> list[tuple[str, Any, float, int]]:
    rows = _query(
        settings,
        "select customer_id, as_of_date, churn_probability, model_version "
        "from mlops.churn_scores order by customer_id",
    )
    return [
        (r["customer_id"], r["as_of_date"], r["churn_probability"], r["model_version"])
        for r in rows
    ]


@pytest.mark.parametrize("kind", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_partitioned_scoring_on_a_local_dask_cluster_equals_unpartitioned(
    kind: str, request: pytest.FixtureRequest, settings: Settings, prefect_harness: str
) -> None:
    import os

    from flows.pipeline import score_flow

    settings = request.getfixturevalue("pg_settings") if kind == "postgres" else settings
    _write(settings, CUSTOMER_FEATURES_TABLE, make_customer_features(2_003, seed=4))
    version = _register_production_model(settings)

    whole = pipeline.score(settings)
    expected = _scores(settings)
    assert whole.rows == len(expected) == 2_003

    # DuckDB: a threaded cluster (one process opens the file); PostgreSQL: worker processes
    state = score_flow(settings, partitions=4, dask_workers=2, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert (result.rows, result.model_version, result.as_of_dates) == (
        whole.rows, version, whole.as_of_dates
    )  # fmt: skip
    got = _scores(settings)
    assert [g[:2] + g[3:] for g in got] == [e[:2] + e[3:] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], rtol=0, atol=1e-12)
    logs = _logs(state.state_details.flow_run_id)
    assert any("in 4 partitions on a local Dask cluster" in m for m in logs), logs

    # each partition was a task on a Dask worker (processes for PostgreSQL)
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId

    with _client() as client:
        (subflow,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(
                    any_=[t.id for t in _task_runs(state.state_details.flow_run_id)]
                )
            )
        )
    partitions = [t for t in _task_runs(subflow.id) if t.name.startswith("score_partition_task")]
    assert len(partitions) == 4 and all(t.state.is_completed() for t in partitions)
    workers = [m for m in _logs(subflow.id) if m.startswith("partition ")]
    assert len(workers) == 4
    if kind == "postgres":
        assert all(f"pid {os.getpid()} " not in m for m in workers), workers
    else:
        assert all("Dask" in m for m in workers), workers
    staging = _query(
        settings,
        "select count(*) as n from information_schema.tables "
        "where table_name like '_churn_scores_staging_%'",
    )
    assert staging[0]["n"] == 0  # the swap dropped every staging table

    # the same path run in one process (the CLI's `score --partitions`) agrees too
    pipeline.score(settings, partitions=3)
    again = _scores(settings)
    np.testing.assert_allclose([g[2] for g in again], [e[2] for e in expected], rtol=0, atol=1e-12)


# -- keeping runs apart beyond one host -------------------------------------------------------
@pytest.mark.postgres
def test_the_postgres_advisory_lock_keeps_runs_on_other_hosts_apart(
    pg_settings: Settings, tmp_path: Path
) -> None:
    """Two 'hosts' (separate data dirs, so separate file locks) on one PostgreSQL warehouse."""
    other_host = pg_settings.model_copy(update={"data_dir": tmp_path / "other-host"})
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from retailml.config import Settings
        from retailml.orchestration import pipeline_lock
        settings = Settings.model_validate_json({other_host.model_dump_json()!r})
        with pipeline_lock(settings):
            print("held", flush=True)
            time.sleep(30)
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineBusyError) as caught, pipeline_lock(pg_settings):
            pass
        message = str(caught.value)
        assert "PostgreSQL backend" in message and f"pid={holder.pid}" in message
        assert pg_settings.pg_database in message
    finally:
        holder.kill()
        holder.wait()
    with pipeline_lock(pg_settings, wait_seconds=10):  # freed when the holder's session ended
        pass


def test_a_full_prefect_global_concurrency_limit_fails_the_flow_clearly(
    settings: Settings, prefect_harness: str
) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.pipeline import GLOBAL_CONCURRENCY_LIMIT, materialize_flow

    with _client() as client:  # a run on another worker holds the only slot
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=GLOBAL_CONCURRENCY_LIMIT, limit=1, active_slots=1)
        )
    try:
        state = materialize_flow(settings, lock_wait_seconds=1, return_state=True)
    finally:
        with _client() as client:
            client.delete_global_concurrency_limit_by_name(GLOBAL_CONCURRENCY_LIMIT)
    assert state.is_failed()
    with pytest.raises(PipelineBusyError, match="global concurrency limit 'retailml-pipeline'"):
        state.result()
    # the file lock it took first was released on the way out
    assert [e["event"] for e in lock_history(settings)] == ["acquired", "released"]


def test_the_retrain_check_command_trains_the_first_model_through_the_gate(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from retailml import cli

    _write(settings, CHURN_TRAINING_TABLE, make_churn_training(500, 10))
    _write(settings, CUSTOMER_FEATURES_TABLE, make_customer_features(600))
    monkeypatch.setenv("RETAILML_DATA_DIR", str(settings.data_dir))
    assert cli.main(["retrain-check"]) == 0
    assert capsys.readouterr().out.startswith("churn: retrained v1, promoted to production")
    assert cli.main(["retrain-check", "--wait", "5"]) == 0  # calm: the monitor asks for nothing
    out = capsys.readouterr().out
    assert out.startswith("churn: not retrained: no trigger over its threshold"), out
    assert _churn_versions(settings) == {1: ("production", _churn_versions(settings)[1][1])}
    scored = _query(settings, "select count(*) as n from mlops.churn_scores")[0]["n"]
    assert scored == 600  # the promotion re-scored every customer
