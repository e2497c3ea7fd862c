"""Prefect flows: one per pipeline stage, ``daily`` chaining them, ``backfill(start, end)``
and the ``retrain-check``.

Business logic lives in ``retailml.pipeline``; these flows add what only a scheduler needs:

- **Retries with backoff on I/O only.** The tasks here wrap the stages that move data over
  the network (extract, backfill, score, materialize): up to 3 retries, exponential backoff
  with jitter, and only for failures :func:`retailml.orchestration.is_transient` calls
  transient (connection refused or reset, timeouts, throttling, a DuckDB file held by another
  process). Deterministic steps (dbt, training, drift statistics) run as plain calls in the
  flow and fail once, at once: a failing dbt test fails the same way on every retry.
- **One run at a time.** Every flow that writes the warehouse holds the pipeline lock
  (:func:`retailml.orchestration.pipeline_lock`: a file lock under the data dir, plus a
  PostgreSQL advisory lock on that warehouse), which works across processes, including plain
  ``python -m flows.pipeline`` runs that each start their own temporary Prefect server, and
  the Prefect global concurrency limit ``retailml-pipeline`` when the server has one (workers
  on several hosts). ``prefect.yaml`` adds deployment concurrency limits on top.
- **Idempotent reruns.** Ingestion is exactly-once (ledger), dbt builds converge, scores and
  online features are replaced, training happens only when a trigger fires and new data
  exists.
- **Logs and artifacts** saying what each step did: rows loaded, dbt models built and tests
  passed, versions trained and promoted or kept (with the gate's reason), the drift table.

They run as plain Python with no Prefect server (Prefect starts a temporary local one):
``python -m flows.pipeline daily``, ``python -m flows.pipeline backfill 2025-03-01 2025-03-07``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.tasks import exponential_backoff

from retailml import orchestration, pipeline
from retailml.config import Settings, load_settings
from retailml.orchestration import PipelineBusyError, is_transient

#: How long a flow waits for another run to release the pipeline lock before failing.
DEFAULT_LOCK_WAIT_SECONDS = 3600.0
#: The Prefect global concurrency limit the flows also hold when the server defines it
#: (``prefect gcl create retailml-pipeline --limit 1``): one pipeline run across every worker.
GLOBAL_CONCURRENCY_LIMIT = "retailml-pipeline"
IO_RETRIES = 3
IO_BACKOFF_SECONDS = 10.0


def _logger_progress() -> pipeline.Progress:
    return get_run_logger().info


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of the I/O tasks: retry transient failures only."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as error:
            exc = error
    retry = exc is not None and is_transient(exc)
    with contextlib.suppress(Exception):
        get_run_logger().warning(
            f"{task.name}: {type(exc).__name__}: {exc} is "
            + ("transient: retrying with backoff" if retry else "not transient: no retry")
        )
    return retry


def io_task(fn: Any) -> Any:
    """A Prefect task with the retry policy of I/O steps."""
    return task(
        fn,
        retries=IO_RETRIES,
        retry_delay_seconds=exponential_backoff(backoff_factor=IO_BACKOFF_SECONDS),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_on_transient,
    )


# -- I/O tasks (retried) ----------------------------------------------------------------------
@io_task
def ingest_task(settings: Settings) -> Any:
    return pipeline.ingest(settings, progress=_logger_progress())


@io_task
def backfill_task(settings: Settings, start: date, end: date, sources: tuple[str, ...]) -> Any:
    # Idempotent: a retry replaces exactly what the range loaded, as the first attempt did.
    return pipeline.backfill(settings, start, end, progress=_logger_progress(), sources=sources)


@io_task
def score_task(settings: Settings) -> Any:
    return pipeline.score(settings, progress=_logger_progress())


@io_task
def plan_scoring_task(settings: Settings, partitions: int) -> Any:
    return pipeline.plan_scoring(settings, partitions)


@io_task
def score_partition_task(settings: Settings, plan: Any, index: int) -> Any:
    result = pipeline.score_one_partition(settings, plan, index)
    get_run_logger().info(
        f"partition {index} {plan.bounds[index]}: {result.rows} customers scored on {result.worker}"
    )
    return result


@io_task
def finish_scoring_task(settings: Settings, plan: Any, results: list[Any], seconds: float) -> Any:
    return pipeline.finish_scoring(
        settings, plan, results, progress=_logger_progress(), seconds=seconds
    )


@io_task
def materialize_task(settings: Settings) -> int:
    return pipeline.materialize(settings, progress=_logger_progress())


IO_TASKS = {
    "ingest": ingest_task,
    "backfill": backfill_task,
    "score": score_task,
    "plan_scoring": plan_scoring_task,
    "score_partition": score_partition_task,
    "finish_scoring": finish_scoring_task,
    "materialize": materialize_task,
}


# -- helpers ----------------------------------------------------------------------------------
def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings()


@contextlib.contextmanager
def _global_limit(wait_seconds: float) -> Iterator[None]:
    """Hold a slot of the Prefect global concurrency limit, if the server defines it."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(GLOBAL_CONCURRENCY_LIMIT)
    except ObjectNotFound:
        logger.info(
            f"no Prefect global concurrency limit {GLOBAL_CONCURRENCY_LIMIT!r} on this server: "
            "the pipeline lock alone keeps runs apart"
        )
        yield
        return
    try:
        with concurrency(GLOBAL_CONCURRENCY_LIMIT, occupy=1, timeout_seconds=wait_seconds):
            logger.info(f"holding a slot of {GLOBAL_CONCURRENCY_LIMIT!r}")
            yield
    except TimeoutError as exc:
        raise PipelineBusyError(
            f"the Prefect global concurrency limit {GLOBAL_CONCURRENCY_LIMIT!r} stayed full "
            f"for {wait_seconds:g}s: another pipeline run holds it"
        ) from exc


@contextlib.contextmanager
def exclusive(settings: Settings, wait_seconds: float) -> Iterator[None]:
    """The pipeline lock, then the Prefect global limit; a no-op inside a run holding them."""
    logger = get_run_logger()
    with orchestration.pipeline_lock(
        settings, wait_seconds=wait_seconds, progress=logger.info
    ) as holder:
        if not holder:  # re-entered from a parent flow that already holds both
            yield
            return
        with _global_limit(wait_seconds):
            yield


def _attach_model_reports(name: str, version: Any) -> None:
    """The version's metrics (markdown) and a link to each of its charts, on the flow run."""
    from retailml.training.reports import version_markdown

    create_markdown_artifact(
        key=f"{name}-model", markdown=version_markdown(version), description=f"{name} model"
    )
    for report, entry in sorted(version.reports.items()):
        slug = report.removesuffix(".png").replace("_", "-")
        create_link_artifact(
            link=entry["uri"],
            link_text=f"{name} v{version.version} {report}",
            key=f"{name}-{slug}",
            description=f"sha256 {entry['sha256']}",
        )


def _retrain_artifact(outcome: pipeline.RetrainOutcome) -> None:
    lines = [f"## Retraining of {outcome.model_name}", "", outcome.summary(), ""]
    if outcome.reasons:
        lines += ["Triggers:", "", *(f"- {reason}" for reason in outcome.reasons), ""]
    if outcome.result is not None:
        decision = outcome.result.promotion
        lines += [
            "| candidate | promoted | metric | candidate value | production | production value |",
            "|---|---|---|---|---|---|",
            f"| v{decision.candidate_version} | {'yes' if decision.promoted else 'no'} | "
            f"{decision.metric} | {decision.candidate_value} | "
            f"{'v' + str(decision.production_version) if decision.production_version else '-'} "
            f"| {decision.production_value} |",
            "",
            f"Gate: {decision.reason}",
        ]
    create_markdown_artifact(key=f"{outcome.model_name}-retrain", markdown="\n".join(lines) + "\n")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_describe(v)}" for k, v in value.items())
    return pipeline.describe(value)


# -- stage flows ------------------------------------------------------------------------------
@flow(name="simulate")
def simulate_flow(days: int = 1, settings: Settings | None = None) -> str:
    """The simulated shop's next ``days`` of exports and document changes (stands in for the
    systems that write S3 and MongoDB in production)."""
    options = pipeline.SimulateOptions(days=days)
    summary = pipeline.simulate(_settings(settings), options, progress=_logger_progress())
    return f"{summary.order_lines} order lines over {summary.days} days"


@flow(name="ingest")
def ingest_flow(
    settings: Settings | None = None, lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS
) -> Any:
    """Extract new S3 objects and MongoDB documents into the raw tables (exactly once)."""
    settings = _settings(settings)
    with exclusive(settings, lock_wait_seconds):
        return ingest_task(settings)


@flow(name="transform")
def transform_flow(
    settings: Settings | None = None,
    select: str | None = None,
    full_refresh: bool = False,
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
) -> Any:
    """``dbt build`` (optionally ``--select``/``--full-refresh``) through dbt's programmatic
    runner. A failing model or test fails the flow, named in the error and the logs; dbt is
    deterministic, so it is not retried."""
    settings = _settings(settings)
    command = ["build"]
    if select:
        command += ["--select", *select.split()]
    if full_refresh:
        command.append("--full-refresh")
    with exclusive(settings, lock_wait_seconds):
        return pipeline.transform(settings, tuple(command), progress=_logger_progress())


@flow(name="train")
def train_flow(
    settings: Settings | None = None,
    models: tuple[str, ...] = ("churn", "demand"),
    margin: float = 0.0,
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
) -> dict[str, Any]:
    """Train, evaluate and register ``models``; each candidate goes through the promotion
    gate. Not retried: a training failure is a data problem, not an I/O one."""
    settings = _settings(settings)
    with exclusive(settings, lock_wait_seconds):
        results = pipeline.train(settings, tuple(models), _logger_progress(), margin=margin)
    for name, result in results.items():
        _attach_model_reports(name, result.version)
    return results


@flow(name="score-partitions")
def score_partitions_flow(settings: Settings, plan: Any) -> list[Any]:
    """One task per partition on this flow's task runner (a Dask cluster in ``score``)."""
    futures = score_partition_task.map(unmapped(settings), unmapped(plan), range(len(plan.bounds)))
    return [future.result() for future in futures]


def dask_task_runner(settings: Settings, address: str | None = None, workers: int = 2) -> Any:
    """The Dask task runner of partitioned scoring: the cluster at ``address`` (e.g.
    ``tcp://scheduler:8786``), else a temporary local cluster of ``workers`` (processes, or
    threads for DuckDB, whose file one process opens at a time)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    processes = settings.warehouse != "duckdb"
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1 if processes else 2,
            "processes": processes,
            "dashboard_address": None,
        },
    )


@flow(name="score")
def score_flow(
    settings: Settings | None = None,
    partitions: int = 0,
    dask_address: str | None = None,
    dask_workers: int = 2,
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
) -> Any:
    """Batch-score every customer with the production churn model. ``partitions > 0``
    splits the customers into ranges scored by one task each on a Dask cluster
    (``dask_address``, else a local one), then swaps them in in one transaction."""
    settings = _settings(settings)
    with exclusive(settings, lock_wait_seconds):
        if partitions <= 0:
            return score_task(settings)
        logger = get_run_logger()
        started = time.perf_counter()
        plan = plan_scoring_task(settings, partitions)
        logger.info(
            f"scoring with churn v{plan.model_version} in {len(plan.bounds)} partitions "
            f"on {'the Dask cluster at ' + dask_address if dask_address else 'a local Dask cluster'}"
        )
        runner = dask_task_runner(settings, dask_address, dask_workers)
        try:
            results = score_partitions_flow.with_options(task_runner=runner)(settings, plan)
        except BaseException:
            pipeline.abandon_scoring(settings, plan)
            raise
        return finish_scoring_task(settings, plan, results, time.perf_counter() - started)


@flow(name="materialize")
def materialize_flow(
    settings: Settings | None = None, lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS
) -> int:
    """Copy current customer features and forecasts into the online store."""
    settings = _settings(settings)
    with exclusive(settings, lock_wait_seconds):
        return materialize_task(settings)


@flow(name="monitor")
def monitor_flow(
    settings: Settings | None = None, lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS
) -> Any:
    """Drift (and decay) check of the production model; the report as a markdown artifact."""
    settings = _settings(settings)
    with exclusive(settings, lock_wait_seconds):
        report = pipeline.monitor(settings, progress=_logger_progress())
    create_markdown_artifact(
        key="drift-report",
        markdown=report.markdown(),
        description="drift of the features and the served scores, realized performance",
    )
    return report


def _retrain(settings: Settings, report: Any, **options: Any) -> pipeline.RetrainOutcome:
    outcome = pipeline.retrain_if_needed(settings, report, _logger_progress(), **options)
    _retrain_artifact(outcome)
    if outcome.result is not None:
        _attach_model_reports(outcome.model_name, outcome.result.version)
    return outcome


@flow(name="retrain-check")
def retrain_check_flow(
    settings: Settings | None = None,
    max_age_days: int | None = None,
    force: bool = False,
    margin: float = 0.0,
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
) -> dict[str, Any]:
    """Monitor, then retrain the churn model if drift or decay passed its thresholds (or
    production is older than ``max_age_days``); the candidate is promoted only through the
    registry's gate, and a promotion refreshes scores and online features."""
    settings = _settings(settings)
    results: dict[str, Any] = {}
    with exclusive(settings, lock_wait_seconds):
        if pipeline.has_production(settings):
            results["monitor"] = monitor_flow(settings)
        outcome = _retrain(
            settings, results.get("monitor"), max_age_days=max_age_days, force=force,
            margin=margin,
        )  # fmt: skip
        results["retrain"] = outcome
        if outcome.promoted:
            results["score"] = score_flow(settings)
            results["materialize"] = materialize_flow(settings)
    return results


@flow(name="backfill")
def backfill_flow(
    start: date,
    end: date,
    settings: Settings | None = None,
    sources: tuple[str, ...] = ("s3", "mongo"),
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
) -> dict[str, Any]:
    """Re-extract the days ``start..end`` (replacing exactly what they loaded), rebuild the
    dbt models, and re-score and re-materialize when a production model exists: the warehouse
    ends as if those days had been loaded right the first time."""
    settings = _settings(settings)
    if end < start:
        raise ValueError(f"backfill: end {end} is before start {start}")
    results: dict[str, Any] = {}
    with exclusive(settings, lock_wait_seconds):
        results["backfill"] = backfill_task(settings, start, end, tuple(sources))
        results["transform"] = transform_flow(settings)
        if pipeline.has_production(settings):
            results["score"] = score_flow(settings)
            results["materialize"] = materialize_flow(settings)
        else:
            get_run_logger().info("no production churn model: nothing to re-score")
    _summary_artifact(f"backfill-{start}-{end}".replace("_", "-"), results)
    return results


def _summary_artifact(key: str, results: dict[str, Any]) -> None:
    rows = "\n".join(f"| {name} | {_describe(value)} |" for name, value in results.items())
    create_markdown_artifact(key=key, markdown=f"| stage | result |\n|---|---|\n{rows}\n")


@flow(name="daily")
def daily_flow(
    settings: Settings | None = None,
    score_partitions: int = 0,
    dask_address: str | None = None,
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
) -> dict[str, Any]:
    """ingest -> transform -> train -> score -> materialize -> monitor -> retrain check,
    stopping at the first failure.

    The demand forecast is refitted every day (it forecasts from the latest day). The churn
    model is trained when there is no production version yet; otherwise retraining is decided
    after ``monitor`` (drift or decay over its thresholds, and new labelled rows), goes
    through the promotion gate, and a promotion refreshes scores and online features.
    """
    settings = _settings(settings)
    results: dict[str, Any] = {}
    score_options = {"partitions": score_partitions, "dask_address": dask_address}
    with exclusive(settings, lock_wait_seconds):
        results["ingest"] = ingest_flow(settings)
        results["transform"] = transform_flow(settings)
        results["train"] = {"churn": _retrain(settings, None)}
        results["train"].update(train_flow(settings, models=("demand",)))
        results["score"] = score_flow(settings, **score_options)
        results["materialize"] = materialize_flow(settings)
        results["monitor"] = monitor_flow(settings)
        outcome = _retrain(settings, results["monitor"])
        results["retrain"] = outcome
        if outcome.promoted:
            results["score"] = score_flow(settings, **score_options)
            results["materialize"] = materialize_flow(settings)
    _summary_artifact("daily-run", results)
    return results


FLOWS = {
    "simulate": simulate_flow,
    "ingest": ingest_flow,
    "transform": transform_flow,
    "train": train_flow,
    "score": score_flow,
    "materialize": materialize_flow,
    "monitor": monitor_flow,
    "retrain-check": retrain_check_flow,
    "backfill": backfill_flow,
    "daily": daily_flow,
}


def main(argv: list[str]) -> None:
    """``python -m flows.pipeline [flow] [args]``: run one flow as plain Python."""
    name = argv[0] if argv else "daily"
    if name not in FLOWS:
        raise SystemExit(f"unknown flow {name!r}; one of {', '.join(FLOWS)}")
    if name == "backfill":
        if len(argv) != 3:
            raise SystemExit("usage: python -m flows.pipeline backfill START END (YYYY-MM-DD)")
        backfill_flow(date.fromisoformat(argv[1]), date.fromisoformat(argv[2]))
    else:
        FLOWS[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
