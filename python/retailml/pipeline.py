"""The pipeline's stages as plain functions: build clients from settings, call the layer, close.

The CLI (``retailml <stage>``) and the Prefect flows (``flows/``) both call these, so a stage
behaves the same whether a person or the scheduler runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from . import runtime
from .config import Settings
from .orchestration import pipeline_lock
from .warehouse import Warehouse

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@contextmanager
def _warehouse(settings: Settings) -> Iterator[Warehouse]:
    warehouse = runtime.open_warehouse(settings)
    try:
        yield warehouse
    finally:
        warehouse.close()


@dataclass(frozen=True)
class SimulateOptions:
    """How many more days to simulate; the other fields (None: keep) shape a new business."""

    days: int = 365
    seed: int | None = None
    start_date: date | None = None
    initial_customers: int | None = None
    new_customers_per_day: float | None = None
    n_products: int | None = None
    drift_start: date | None = None


def simulate(settings: Settings, options: SimulateOptions, progress: Progress = _quiet) -> Any:
    """Simulate ``options.days`` more days of the business into S3 and MongoDB.

    A business already simulated continues with its saved configuration; options that
    contradict it are refused by the simulator with the differing fields named.
    """
    from .simulate import SimulationConfig, saved_config, simulate_days

    state_dir = settings.data_dir / "simulator"
    base = saved_config(state_dir) or SimulationConfig(
        churn_horizon_days=settings.churn_horizon_days,
        shop_timezone=settings.shop_timezone,
        key_prefix=settings.s3_prefix,
    )
    overrides = {
        name: value
        for name, value in asdict(options).items()
        if name != "days" and value is not None
    }
    config = replace(base, **overrides)
    summary = simulate_days(
        config,
        options.days,
        objects=runtime.open_object_store(settings, create_bucket=True),
        db=runtime.open_mongo(settings),
        truth_dir=settings.truth_dir,
        state_dir=state_dir,
        progress=progress,
    )
    progress(
        f"simulated {summary.days} days ({summary.first_date}..{summary.last_date}): {summary.order_lines} order lines in {summary.objects_written} objects"
    )
    return summary


def ingest(settings: Settings, progress: Progress = _quiet) -> Any:
    """Extract new S3 objects and MongoDB documents into the warehouse's raw tables."""
    from .ingest import ingest_all

    objects = runtime.open_object_store(settings)
    db = runtime.open_mongo(settings)
    with _warehouse(settings) as warehouse:
        report = ingest_all(warehouse, objects, db, prefix=settings.s3_prefix, progress=progress)
    progress(f"ingested: {report.summary()}")
    return report


def backfill(
    settings: Settings,
    start: date,
    end: date,
    progress: Progress = _quiet,
    sources: tuple[str, ...] = ("s3", "mongo"),
    *,
    rebuild: bool = False,
    lock_wait_seconds: float = 0.0,
) -> Any:
    """Re-extract the days ``start..end``: their S3 partitions and/or Mongo documents,
    replacing exactly what they loaded before. ``rebuild`` then runs ``dbt build`` and, when
    a production churn model exists, re-scores and re-materializes, so everything downstream
    reflects the corrected days. Holds the pipeline lock (see :mod:`.orchestration`)."""
    from .ingest import backfill_all

    with pipeline_lock(settings, wait_seconds=lock_wait_seconds, progress=progress):
        objects = runtime.open_object_store(settings)
        db = runtime.open_mongo(settings)
        with _warehouse(settings) as warehouse:
            report = backfill_all(
                warehouse,
                objects,
                db,
                prefix=settings.s3_prefix,
                start=start,
                end=end,
                sources=sources,
                progress=progress,
            )
        progress(f"backfilled {start}..{end}: {report.summary()}")
        if rebuild:
            transform(settings, progress=progress)
            if has_production(settings):
                score(settings, progress=progress)
                materialize(settings, progress=progress)
            else:
                progress("no production churn model: nothing to re-score")
    return report


@dataclass(frozen=True)
class TransformResult:
    """What one dbt invocation did: dbt's own summary and counts by resource type."""

    command: tuple[str, ...]
    dbt: Any  # transforms.dbt.DbtRunSummary
    counts: dict[str, dict[str, int]]

    def summary(self) -> str:
        return f"dbt {' '.join(self.command)}: {describe_dbt_counts(self.counts)}"


def transform(
    settings: Settings, command: tuple[str, ...] = ("build",), progress: Progress = _quiet
) -> TransformResult:
    """Run dbt (``build`` by default) against the configured warehouse.

    Logs what dbt did by resource type (models built, tests passed...); on failure, logs each
    failing model or test by name and raises :class:`~.transforms.dbt.DbtError` naming them.
    """
    from .transforms.dbt import DbtError, run_dbt

    results = settings.data_dir / "dbt" / "target" / "run_results.json"
    results.unlink(missing_ok=True)  # never report a previous invocation's results
    try:
        summary = run_dbt(settings, command, progress=progress)
    except DbtError as exc:
        for failure in exc.failures:
            progress(f"dbt failure: {failure}")
        if results.is_file():
            progress(f"dbt {' '.join(command)}: {describe_dbt_results(results)}")
        raise
    finally:
        if settings.warehouse == "duckdb":
            _release_dbt_duckdb()
    result = TransformResult(
        tuple(command), summary, dbt_result_counts(results) if results.is_file() else {}
    )
    progress(result.summary())
    return result


def _release_dbt_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb keeps open for the life of the process (a
    class-level environment), so that other processes (the API, another run after this one
    released the pipeline lock) can open the warehouse file."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:
        return
    with DuckDBConnectionManager._LOCK:
        environment = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
        if environment is not None:
            environment.close()


def dbt_result_counts(run_results: Any) -> dict[str, dict[str, int]]:
    """``{resource type: {status: count}}`` of a dbt ``run_results.json`` (path or dict)."""
    import json
    from pathlib import Path

    data = (
        json.loads(Path(run_results).read_text())
        if not isinstance(run_results, dict)
        else run_results
    )
    counts: dict[str, dict[str, int]] = {}
    for result in data.get("results", []):
        kind = str(result.get("unique_id", "")).split(".", 1)[0] or "node"
        status = str(result.get("status"))
        counts.setdefault(kind, {})
        counts[kind][status] = counts[kind].get(status, 0) + 1
    return counts


def describe_dbt_results(run_results: Any) -> str:
    """E.g. ``20 models built, 1 model skipped, 155 tests passed, 1 test failed``."""
    return describe_dbt_counts(dbt_result_counts(run_results))


def describe_dbt_counts(counts: dict[str, dict[str, int]]) -> str:
    """Counts by resource type and status (:func:`dbt_result_counts`) in words."""
    nouns = {"model": "model", "snapshot": "snapshot", "seed": "seed", "test": "test",
             "unit_test": "unit test", "exposure": "exposure"}  # fmt: skip
    verbs = {"success": "built", "pass": "passed", "no-op": "unchanged", "warn": "warned",
             "fail": "failed", "error": "errored", "skipped": "skipped"}  # fmt: skip
    order = list(verbs)
    parts = []
    for kind, statuses in sorted(counts.items()):
        ranked = sorted(statuses.items(), key=lambda item: [*order, item[0]].index(item[0]))
        for status, n in ranked:
            noun = nouns.get(kind, kind)
            parts.append(f"{n} {noun}{'' if n == 1 else 's'} {verbs.get(status, status)}")
    return ", ".join(parts) or "no nodes run"


def train(
    settings: Settings,
    models: tuple[str, ...] = ("churn", "demand"),
    progress: Progress = _quiet,
    *,
    margin: float = 0.0,
) -> dict[str, Any]:
    """Train, evaluate and register the models; promotion goes through the registry's gate
    (a candidate must beat production by ``margin`` on the same held-out data).

    dbt's manifest (from the last ``transform``) puts the dbt lineage and the raw batches in
    each version's training fingerprint.
    """
    from .training.churn import train_churn
    from .training.demand import train_demand

    manifest = settings.data_dir / "dbt" / "target" / "manifest.json"
    dbt_manifest = manifest.resolve() if manifest.is_file() else None
    results: dict[str, Any] = {}
    with _warehouse(settings) as warehouse:
        registry = runtime.open_registry(settings, warehouse)
        if "churn" in models:
            results["churn"] = train_churn(
                warehouse,
                registry,
                horizon_days=settings.churn_horizon_days,
                progress=progress,
                dbt_manifest=dbt_manifest,
                max_fairness_gap=settings.churn_max_fairness_gap,
                margin=margin,
                drift_bins=settings.drift_bins,
            )
            progress(f"trained {describe(results['churn'])}")
        if "demand" in models:
            results["demand"] = train_demand(
                warehouse, registry, progress=progress, dbt_manifest=dbt_manifest, margin=margin
            )
            progress(f"trained {describe(results['demand'])}")
    return results


def score(settings: Settings, progress: Progress = _quiet, *, partitions: int = 0) -> Any:
    """Batch-score every customer with the production churn model into the warehouse.

    ``partitions > 0`` scores customer_id ranges one after the other through the partitioned
    path (the one the ``score`` flow fans out over a Dask cluster); the result is the same.
    """
    from .training.scoring import score_customers

    if partitions > 0:
        return score_partitioned(settings, partitions, progress=progress)
    with _warehouse(settings) as warehouse:
        registry = runtime.open_registry(settings, warehouse)
        result = score_customers(warehouse, registry, progress=progress)
    progress(f"scored: {describe(result)}")
    return result


def plan_scoring(settings: Settings, partitions: int) -> Any:
    """Pin the production churn version and split the customers into ``partitions``."""
    from .training.scoring import plan_partitioned_scoring

    with _warehouse(settings) as warehouse:
        return plan_partitioned_scoring(
            warehouse, runtime.open_registry(settings, warehouse), partitions
        )


def score_one_partition(settings: Settings, plan: Any, index: int) -> Any:
    """Score one partition of ``plan`` into its staging table (runs on any worker)."""
    from .training.scoring import score_partition

    with _warehouse(settings) as warehouse:
        return score_partition(warehouse, runtime.open_registry(settings, warehouse), plan, index)


def finish_scoring(
    settings: Settings,
    plan: Any,
    results: list[Any],
    progress: Progress = _quiet,
    *,
    seconds: float = 0.0,
) -> Any:
    """Swap the partitions' scores into ``mlops.churn_scores`` in one transaction."""
    from .training.scoring import finish_partitioned_scoring

    with _warehouse(settings) as warehouse:
        result = finish_partitioned_scoring(
            warehouse, plan, results, seconds=seconds, progress=progress
        )
    progress(f"scored: {describe(result)}")
    return result


def abandon_scoring(settings: Settings, plan: Any) -> None:
    """Drop a failed partitioned run's staging tables (the previous scores stay)."""
    from .training.scoring import drop_partition_staging

    with _warehouse(settings) as warehouse:
        drop_partition_staging(warehouse, plan)


def score_partitioned(settings: Settings, partitions: int, progress: Progress = _quiet) -> Any:
    """The partitioned path run in this process, one partition after the other."""
    import time

    started = time.perf_counter()
    plan = plan_scoring(settings, partitions)
    progress(
        f"scoring with churn v{plan.model_version} in {len(plan.bounds)} partitions ({plan.run_id})"
    )
    try:
        results = [score_one_partition(settings, plan, i) for i in range(len(plan.bounds))]
    except BaseException:
        abandon_scoring(settings, plan)
        raise
    return finish_scoring(settings, plan, results, progress, seconds=time.perf_counter() - started)


def materialize(settings: Settings, progress: Progress = _quiet) -> int:
    """Copy current customer features and forecasts into the online store for the API."""
    from .features.materialize import materialize_online_features

    with _warehouse(settings) as warehouse:
        rows = materialize_online_features(warehouse, runtime.open_online_store(settings))
    progress(f"materialized {rows} customer feature rows into the online store")
    return rows


def drift_thresholds(settings: Settings) -> Any:
    from .monitoring.drift import DriftThresholds

    return DriftThresholds(
        alpha=settings.drift_alpha,
        psi=settings.drift_psi_threshold,
        wasserstein=settings.drift_wasserstein_threshold,
        js=settings.drift_js_threshold,
        new_category_share=settings.drift_new_category_share,
    )


def monitor(settings: Settings, progress: Progress = _quiet) -> Any:
    """Drift of the current features and the served scores against the production model's
    reference, realized performance where labels have matured, charts of what moved."""
    from .monitoring.monitor import run_monitor
    from .serving.prediction_log import flush_prediction_log, open_spool

    run_at = datetime.now(UTC)
    charts_dir = settings.data_dir / "monitoring" / run_at.strftime("%Y%m%dT%H%M%SZ")
    with _warehouse(settings) as warehouse:
        flushed = flush_prediction_log(open_spool(settings), warehouse)
        progress(f"moved {flushed} logged predictions into the warehouse")
        registry = runtime.open_registry(settings, warehouse)
        report = run_monitor(
            warehouse,
            registry,
            horizon_days=settings.churn_horizon_days,
            thresholds=drift_thresholds(settings),
            prediction_window_days=settings.drift_prediction_window_days,
            auc_drop=settings.performance_max_auc_drop,
            charts_dir=charts_dir,
            run_at=run_at,
        )
    progress(f"monitor: {describe(report)}")
    if report.charts:
        progress(f"{len(report.charts)} charts in {charts_dir}")
    return report


STAGES: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("ingest", ingest),
    ("transform", transform),
    ("train", train),
    ("score", score),
    ("materialize", materialize),
    ("monitor", monitor),
)


# -- retraining ------------------------------------------------------------------------------
CHURN = "churn"


@dataclass(frozen=True)
class TrainingDataState:
    """What the churn trainer would read now: rows and latest cutoff of the training mart."""

    rows: int
    last_cutoff: str | None


@dataclass(frozen=True)
class RetrainOutcome:
    """What the retraining step decided and did for one model."""

    model_name: str
    retrained: bool
    reasons: tuple[str, ...]  # what triggered retraining (empty: nothing did)
    note: str  # what was done, or why not
    result: Any = None  # the TrainResult when retrained

    @property
    def promoted(self) -> bool:
        return bool(self.result is not None and self.result.promotion.promoted)

    def summary(self) -> str:
        why = f" (triggered by: {'; '.join(self.reasons)})" if self.reasons else ""
        if not self.retrained:
            return f"{self.model_name}: not retrained: {self.note}{why}"
        version = self.result.version.version
        verdict = "promoted to production" if self.promoted else "kept as candidate"
        return f"{self.model_name}: retrained v{version}, {verdict}: {self.note}{why}"


def retrain_decision(
    *,
    production: Any,
    latest: Any,
    report: Any,
    data: TrainingDataState,
    max_age_days: int | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> tuple[bool, tuple[str, ...], str]:
    """(retrain?, triggers, note) for the churn model (pure).

    Triggers: no production version; the monitor's ``needs_retraining`` (its ``reasons``);
    a production version older than ``max_age_days``; ``force``. A trigger does not retrain
    when the newest registered version was trained on the same rows (same count and latest
    cutoff): the trainer is seeded, so it would reproduce that version (unless ``force``).
    """
    if production is None:
        return True, ("no production version",), "training the first production candidate"
    triggers: list[str] = []
    if report is not None and getattr(report, "needs_retraining", False):
        triggers.extend(getattr(report, "reasons", None) or ["the monitor asks for retraining"])
    if max_age_days is not None:
        age = ((now or datetime.now(UTC)) - production.created_at).days
        if age > max_age_days:
            triggers.append(
                f"production v{production.version} is {age} days old (limit {max_age_days})"
            )
    if force:
        triggers.append("forced")
    if not triggers:
        if report is None:
            return False, (), f"production v{production.version} exists (the monitor decides)"
        return False, (), f"no trigger over its threshold: production v{production.version} kept"
    if not force and latest is not None:
        fingerprint = latest.training_fingerprint or {}
        if fingerprint.get("row_count") == data.rows and str(fingerprint.get("last_cutoff")) == str(
            data.last_cutoff
        ):
            return (
                False,
                tuple(triggers),
                f"v{latest.version} ({latest.alias}) was trained on these same {data.rows} rows "
                f"up to cutoff {data.last_cutoff}; retraining would reproduce it, so it waits "
                "for newly labelled rows",
            )
    return True, tuple(triggers), "retraining"


def training_data_state(warehouse: Warehouse) -> TrainingDataState:
    from .features.spec import CHURN_TRAINING_TABLE, CUTOFF

    if not warehouse.table_exists(CHURN_TRAINING_TABLE):
        return TrainingDataState(0, None)
    row = warehouse.query_arrow(
        f"select count(*) as n, max({CUTOFF}) as last_cutoff from {CHURN_TRAINING_TABLE}"
    ).to_pylist()[0]
    last = row["last_cutoff"]
    return TrainingDataState(int(row["n"]), None if last is None else str(last)[:10])


def has_production(settings: Settings, model_name: str = CHURN) -> bool:
    from .registry import ModelNotFoundError

    with _warehouse(settings) as warehouse:
        try:
            runtime.open_registry(settings, warehouse).get(model_name, "production")
        except ModelNotFoundError:
            return False
    return True


def retrain_if_needed(
    settings: Settings,
    report: Any = None,
    progress: Progress = _quiet,
    *,
    max_age_days: int | None = None,
    force: bool = False,
    margin: float = 0.0,
) -> RetrainOutcome:
    """Retrain the churn model when a trigger passes its threshold (see
    :func:`retrain_decision`); the candidate is evaluated by the trainer and becomes
    production only through the registry's promotion gate (``margin`` on the same held-out
    data, the fairness limit)."""
    from .registry import ModelNotFoundError

    with _warehouse(settings) as warehouse:
        registry = runtime.open_registry(settings, warehouse)
        try:
            production = registry.get(CHURN, "production")
        except ModelNotFoundError:
            production = None
        versions = registry.list_versions(CHURN)
        data = training_data_state(warehouse)
    retrain, reasons, note = retrain_decision(
        production=production,
        latest=versions[0] if versions else None,
        report=report,
        data=data,
        max_age_days=max_age_days,
        force=force,
    )
    if not retrain:
        outcome = RetrainOutcome(CHURN, False, reasons, note)
    else:
        progress(f"retraining {CHURN}: {'; '.join(reasons)}")
        result = train(settings, (CHURN,), progress, margin=margin)[CHURN]
        outcome = RetrainOutcome(CHURN, True, reasons, result.promotion.reason, result)
    progress(f"retrain: {outcome.summary()}")
    return outcome


def retrain_check(
    settings: Settings,
    progress: Progress = _quiet,
    *,
    max_age_days: int | None = None,
    force: bool = False,
    margin: float = 0.0,
    lock_wait_seconds: float = 0.0,
) -> dict[str, Any]:
    """Monitor, then retrain through the gate if needed; re-score and re-materialize when a
    new version was promoted. Holds the pipeline lock."""
    results: dict[str, Any] = {}
    with pipeline_lock(settings, wait_seconds=lock_wait_seconds, progress=progress):
        if has_production(settings):
            results["monitor"] = monitor(settings, progress=progress)
        outcome = retrain_if_needed(
            settings,
            results.get("monitor"),
            progress,
            max_age_days=max_age_days,
            force=force,
            margin=margin,
        )
        results["retrain"] = outcome
        if outcome.promoted:
            results["score"] = score(settings, progress=progress)
            results["materialize"] = materialize(settings, progress=progress)
    return results


def daily(
    settings: Settings,
    progress: Progress = _quiet,
    *,
    lock_wait_seconds: float = 0.0,
    score_partitions: int = 0,
) -> dict[str, Any]:
    """ingest -> transform -> train -> score -> materialize -> monitor -> retrain check.

    The demand model is refitted every day (its forecasts start from the latest day); the
    churn model is trained only when there is no production version yet, and otherwise
    retrained after ``monitor`` when drift or decay passes its thresholds, through the
    promotion gate, with scores and online features refreshed if a new version is promoted.
    The first failing stage stops the run with its error. Holds the pipeline lock.
    """
    results: dict[str, Any] = {}
    with pipeline_lock(settings, wait_seconds=lock_wait_seconds, progress=progress):
        for name, stage in (("ingest", ingest), ("transform", transform)):
            progress(f"== {name}")
            results[name] = stage(settings, progress=progress)
        progress("== train")
        results["train"] = {
            CHURN: retrain_if_needed(settings, None, progress),
            **train(settings, ("demand",), progress),
        }
        progress("== score")
        results["score"] = score(settings, progress=progress, partitions=score_partitions)
        for name, stage in (("materialize", materialize), ("monitor", monitor)):
            progress(f"== {name}")
            results[name] = stage(settings, progress=progress)
        progress("== retrain")
        outcome = retrain_if_needed(settings, results["monitor"], progress)
        results["retrain"] = outcome
        if outcome.promoted:
            results["score"] = score(settings, progress=progress, partitions=score_partitions)
            results["materialize"] = materialize(settings, progress=progress)
    return results


def describe(result: Any) -> str:
    """A one-line description of a stage result for logs and flow artifacts."""
    if hasattr(result, "summary") and callable(result.summary):
        return str(result.summary())
    if hasattr(result, "__dataclass_fields__"):
        return str(asdict(result))
    return str(result)
