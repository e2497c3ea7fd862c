"""The orchestration's own logic: the pipeline lock across processes and threads, which
errors are retried, the retraining decision, dbt result summaries, and prefect.yaml against
the flows it names."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import yaml

from retailml import orchestration, pipeline
from retailml.config import Settings
from retailml.orchestration import PipelineBusyError, is_transient, lock_history, pipeline_lock

REPO = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "state", _env_file=None)  # type: ignore[call-arg]


# -- the pipeline lock ------------------------------------------------------------------------
def _hold_in_subprocess(tmp_path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that holds the pipeline lock for ``seconds`` (prints 'held' first)."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from retailml.config import Settings
        from retailml.orchestration import pipeline_lock
        settings = Settings(data_dir=Path({str(tmp_path / "state")!r}), _env_file=None)
        with pipeline_lock(settings):
            print("held", flush=True)
            time.sleep({seconds})
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_fails_clearly_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    holder = _hold_in_subprocess(tmp_path, 30)
    try:
        entered = False
        with pytest.raises(PipelineBusyError) as caught, pipeline_lock(settings, wait_seconds=0):
            entered = True
        assert not entered
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and "pipeline lock" in message
        assert caught.value.holder["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the kernel dropped its flock, the lock is free
    with pipeline_lock(settings, wait_seconds=0) as held:
        assert held["pid"] != holder.pid


def test_a_waiting_run_starts_only_after_the_holder_released(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    holder = _hold_in_subprocess(tmp_path, 1.5)
    messages: list[str] = []
    with pipeline_lock(settings, wait_seconds=60, progress=messages.append, poll_seconds=0.1):
        acquired_at = datetime.now(UTC)
    assert holder.wait(timeout=30) == 0
    assert any(m.startswith("waiting up to") and f"pid {holder.pid}" in m for m in messages)
    events = [
        (e["event"], e["pid"], datetime.fromisoformat(e["at"])) for e in lock_history(settings)
    ]
    assert [(e, p) for e, p, _ in events] == [
        ("acquired", holder.pid), ("released", holder.pid),
        ("acquired", events[2][1]), ("released", events[2][1]),
    ]  # fmt: skip
    assert events[1][2] <= events[2][2] <= acquired_at  # never both held


def test_the_lock_excludes_other_threads_and_is_reentrant_in_its_own(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    other: list[BaseException] = []

    def contender() -> None:  # a new thread starts with a fresh context: not the holder
        try:
            with pipeline_lock(settings, wait_seconds=0):
                pass
        except BaseException as exc:
            other.append(exc)

    with pipeline_lock(settings) as outer:
        assert outer["pid"] > 0
        with pipeline_lock(settings) as inner:  # a stage inside the daily run
            assert inner == {}
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join()
    assert len(other) == 1 and isinstance(other[0], PipelineBusyError)
    # released on the way out, also after an exception
    with pytest.raises(RuntimeError), pipeline_lock(settings):
        raise RuntimeError("stage failed")
    with pipeline_lock(settings, wait_seconds=0):
        pass
    assert orchestration.lock_path(settings).read_text() == ""  # no stale holder record
    assert [e["event"] for e in lock_history(settings)] == ["acquired", "released"] * 3


def test_negative_wait_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="wait_seconds"),
        pipeline_lock(_settings(tmp_path), wait_seconds=-1),
    ):
        pass


# -- retries only for transient failures ------------------------------------------------------
def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def _suppressed(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer from None
    except BaseException as exc:
        return exc


def _cases() -> list[tuple[str, BaseException, bool]]:
    import duckdb
    import psycopg
    import psycopg.errors
    import pymongo.errors
    import redis.exceptions
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    from retailml.training.common import TrainingDataError
    from retailml.transforms.dbt import DbtError
    from retailml.warehouse.base import WarehouseError

    def s3(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")

    return [
        ("connection refused", ConnectionRefusedError(111, "refused"), True),
        ("timeout", TimeoutError("timed out"), True),
        ("missing file", FileNotFoundError("x.parquet"), False),
        ("permission", PermissionError("denied"), False),
        ("bad value", ValueError("bad input"), False),
        ("dbt test failed", DbtError("dbt build failed: test.x", ["test.x"]), False),
        ("training data", TrainingDataError("one class"), False),
        ("s3 unreachable", EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        ("s3 read timeout", ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        ("s3 throttled", s3("SlowDown"), True),
        ("s3 no such bucket", s3("NoSuchBucket"), False),
        ("mongo down", pymongo.errors.ServerSelectionTimeoutError("no servers"), True),
        ("mongo bad query", pymongo.errors.OperationFailure("bad $match"), False),
        ("redis down", redis.exceptions.ConnectionError("refused"), True),
        ("pg connection", psycopg.OperationalError("connection refused"), True),
        ("pg serialization", psycopg.errors.SerializationFailure("retry"), True),
        ("pg missing table", psycopg.errors.UndefinedTable("no table"), False),
        ("duckdb file locked", duckdb.IOException("Could not set lock on file x"), True),
        ("duckdb bad sql", duckdb.ParserException("syntax error"), False),
        ("wrapped reset", _chained(WarehouseError("copy failed"), ConnectionResetError()), True),
        ("context suppressed", _suppressed(ValueError("bad"), ConnectionError()), False),
        ("lock busy", PipelineBusyError("busy"), False),
    ]


@pytest.mark.parametrize(
    ("error", "transient"), [c[1:] for c in _cases()], ids=[c[0] for c in _cases()]
)
def test_only_transient_io_failures_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_only_io_steps_are_retried_tasks() -> None:
    from prefect import Task

    import flows.pipeline as flows

    tasks = {name: obj for name, obj in vars(flows).items() if isinstance(obj, Task)}
    assert set(tasks.values()) == set(flows.IO_TASKS.values())  # no other step is a task
    for name, task in flows.IO_TASKS.items():
        assert task.retries == flows.IO_RETRIES == 3, name
        assert task.retry_delay_seconds == [10.0, 20.0, 40.0], name  # exponential backoff
        assert (
            task.retry_jitter_factor == 0.5 and task.retry_condition_fn is flows.retry_on_transient
        )
    # deterministic steps are plain calls in flows that are not retried either
    for name in ("transform", "train", "monitor", "retrain-check", "daily", "backfill"):
        assert not flows.FLOWS[name].retries, name


# -- the retraining decision ------------------------------------------------------------------
NOW = datetime(2025, 6, 1, tzinfo=UTC)
DATA = pipeline.TrainingDataState(rows=4_000, last_cutoff="2025-05-04")


def _version(version: int, *, alias: str = "production", rows: int = 3_000, cutoff: str = "2025-04-06",
             age_days: int = 3) -> SimpleNamespace:  # fmt: skip
    return SimpleNamespace(
        version=version,
        alias=alias,
        created_at=NOW - timedelta(days=age_days),
        training_fingerprint={"row_count": rows, "last_cutoff": cutoff},
    )


def _report(needs: bool, *reasons: str) -> SimpleNamespace:
    return SimpleNamespace(needs_retraining=needs, reasons=list(reasons))


@pytest.mark.parametrize(
    ("production", "latest", "report", "options", "expected"),
    [
        pytest.param(None, None, None, {}, (True, ("no production version",)), id="first-model"),
        pytest.param(_version(1), _version(1), None, {}, (False, ()), id="before-monitor"),
        pytest.param(_version(1), _version(1), _report(False), {}, (False, ()), id="calm"),
        pytest.param(
            _version(1), _version(1), _report(True, "recency_days drifted (psi 0.4 > 0.2)"), {},
            (True, ("recency_days drifted (psi 0.4 > 0.2)",)), id="drift",
        ),
        pytest.param(
            _version(1), _version(2, alias="candidate", rows=4_000, cutoff="2025-05-04"),
            _report(True, "decay: roc_auc 0.61 < 0.70"), {},
            (False, ("decay: roc_auc 0.61 < 0.70",)), id="drift-but-no-new-rows",
        ),
        pytest.param(
            _version(1, age_days=40), _version(1, age_days=40), _report(False),
            {"max_age_days": 28}, (True, ("production v1 is 40 days old (limit 28)",)), id="stale",
        ),
        pytest.param(
            _version(1, rows=4_000, cutoff="2025-05-04"), _version(1, rows=4_000, cutoff="2025-05-04"),
            _report(False), {"force": True}, (True, ("forced",)), id="forced",
        ),
    ],
)  # fmt: skip
def test_retrain_decision(production, latest, report, options, expected) -> None:
    retrain, reasons, note = pipeline.retrain_decision(
        production=production, latest=latest, report=report, data=DATA, now=NOW, **options
    )
    assert (retrain, reasons) == expected
    assert note
    if expected == (False, ("decay: roc_auc 0.61 < 0.70",)):
        assert "same 4000 rows up to cutoff 2025-05-04" in note


def test_retrain_outcome_summary_names_the_gate_decision() -> None:
    promotion = SimpleNamespace(promoted=False, reason="not better: roc_auc 0.81 vs 0.82")
    result = SimpleNamespace(promotion=promotion, version=SimpleNamespace(version=3))
    outcome = pipeline.RetrainOutcome("churn", True, ("country drifted",), promotion.reason, result)
    assert not outcome.promoted
    assert outcome.summary() == (
        "churn: retrained v3, kept as candidate: not better: roc_auc 0.81 vs 0.82 "
        "(triggered by: country drifted)"
    )


# -- dbt's run results in the logs ------------------------------------------------------------
def test_dbt_results_are_counted_by_resource_type(tmp_path: Path) -> None:
    run_results = {
        "results": [
            {"unique_id": "model.retailml.stg_a", "status": "success"},
            {"unique_id": "model.retailml.fct_b", "status": "success"},
            {"unique_id": "snapshot.retailml.snap", "status": "success"},
            {"unique_id": "test.retailml.unique_stg_a_id.abc", "status": "pass"},
            {"unique_id": "test.retailml.not_null_stg_a_id.def", "status": "fail"},
            {"unique_id": "unit_test.retailml.fct_b.t1", "status": "pass"},
            {"unique_id": "model.retailml.mart_c", "status": "skipped"},
        ]
    }
    path = tmp_path / "run_results.json"
    path.write_text(json.dumps(run_results))
    assert pipeline.dbt_result_counts(path)["model"] == {"success": 2, "skipped": 1}
    assert pipeline.describe_dbt_results(path) == (
        "2 models built, 1 model skipped, 1 snapshot built, 1 test passed, 1 test failed, "
        "1 unit test passed"
    )


# -- prefect.yaml against the flows -----------------------------------------------------------
def _deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def test_prefect_yaml_names_real_flows_with_valid_parameters_and_schedules() -> None:
    from cronsim import CronSim

    import flows.pipeline as flows

    deployments = _deployments()
    assert len({d["name"] for d in deployments}) == len(deployments)
    by_flow = {}
    for deployment in deployments:
        path, _, attribute = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file() and path == "flows/pipeline.py"
        flow = getattr(flows, attribute)
        assert flow in flows.FLOWS.values(), deployment["name"]
        # raises if unknown or mistyped; backfill's range is given per run
        required = (
            {"start": "2025-03-01", "end": "2025-03-07"} if attribute == "backfill_flow" else {}
        )
        flow.validate_parameters({**required, **(deployment.get("parameters") or {})})
        for schedule in deployment.get("schedules") or []:
            start = datetime(2025, 3, 1, tzinfo=ZoneInfo(schedule["timezone"]))
            next(iter(CronSim(schedule["cron"], start)))  # a valid cron in a real time zone
        by_flow.setdefault(flow.name, []).append(deployment)
    daily = next(d for d in deployments if d["name"] == "daily")
    weekly = next(d for d in deployments if d["name"] == "weekly-retrain-check")
    assert daily["schedules"] == [
        {"cron": "30 2 * * *", "timezone": "Europe/Amsterdam", "active": True}
    ]
    assert weekly["entrypoint"].endswith(":retrain_check_flow")
    assert (
        weekly["schedules"][0]["cron"] == "0 6 * * 1" and weekly["parameters"]["max_age_days"] == 28
    )
    for deployment in (daily, weekly):
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    # every flow that writes has a deployment; only daily and the retrain check run on a clock
    assert set(by_flow) >= {"daily", "retrain-check", "backfill", "ingest", "transform", "score"}
    active = {d["name"] for d in deployments for s in d.get("schedules") or [] if s["active"]}
    assert active == {"daily", "weekly-retrain-check"}


# -- the CLI --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["daily", "--wait", "0"],
        ["retrain-check", "--max-age-days", "28"],
        ["backfill", "--start", "2025-03-01", "--end", "2025-03-02", "--rebuild"],
    ],
)
def test_the_cli_fails_clearly_while_another_run_holds_the_pipeline(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from retailml import cli

    monkeypatch.setenv("RETAILML_DATA_DIR", str(tmp_path / "state"))
    holder = _hold_in_subprocess(tmp_path, 30)
    try:
        assert cli.main(argv) == 1
    finally:
        holder.kill()
        holder.wait()
    error = capsys.readouterr().err
    assert "error: PipelineBusyError: another retailml run holds the pipeline lock" in error
    assert f"pid {holder.pid}" in error


def test_the_cli_parses_the_orchestration_commands() -> None:
    from retailml import cli

    parser = cli.build_parser()
    args = parser.parse_args(["retrain-check", "--max-age-days", "28", "--force", "--wait", "60"])
    assert (args.max_age_days, args.force, args.margin, args.wait) == (28, True, 0.0, 60.0)
    args = parser.parse_args(["score", "--partitions", "8"])
    assert args.partitions == 8
    args = parser.parse_args(["backfill", "--start", "2025-03-01", "--end", "2025-03-07"])
    assert not args.rebuild and args.wait == 0.0
