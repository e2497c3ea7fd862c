"""The pipeline's stages as plain functions: build clients from settings, call the layer, close.

The CLI (``retailml <stage>``) and the Prefect flows (``flows/``) both call these, so a stage
behaves the same whether a person or the scheduler runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Any

from . import runtime
from .config import Settings
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
) -> Any:
    """Re-extract the days ``start..end``: their S3 partitions and/or Mongo documents,
    replacing exactly what they loaded before."""
    from .ingest import backfill_all

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
    return report


def transform(
    settings: Settings, command: tuple[str, ...] = ("build",), progress: Progress = _quiet
) -> Any:
    """Run dbt (``build`` by default) against the configured warehouse."""
    from .transforms.dbt import run_dbt

    return run_dbt(settings, command, progress=progress)


def train(
    settings: Settings, models: tuple[str, ...] = ("churn", "demand"), progress: Progress = _quiet
) -> dict[str, Any]:
    """Train, evaluate and register the models; promotion goes through the registry's gate.

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
            )
            progress(f"trained {describe(results['churn'])}")
        if "demand" in models:
            results["demand"] = train_demand(
                warehouse, registry, progress=progress, dbt_manifest=dbt_manifest
            )
            progress(f"trained {describe(results['demand'])}")
    return results


def score(settings: Settings, progress: Progress = _quiet) -> Any:
    """Batch-score every customer with the production churn model into the warehouse."""
    from .training.scoring import score_customers

    with _warehouse(settings) as warehouse:
        registry = runtime.open_registry(settings, warehouse)
        result = score_customers(warehouse, registry, progress=progress)
    progress(f"scored: {describe(result)}")
    return result


def materialize(settings: Settings, progress: Progress = _quiet) -> int:
    """Copy current customer features and forecasts into the online store for the API."""
    from .features.materialize import materialize_online_features

    with _warehouse(settings) as warehouse:
        rows = materialize_online_features(warehouse, runtime.open_online_store(settings))
    progress(f"materialized {rows} customer feature rows into the online store")
    return rows


def monitor(settings: Settings, progress: Progress = _quiet) -> Any:
    """Drift check of the current features against the production model's reference."""
    from .monitoring.drift import check_drift
    from .serving.prediction_log import flush_prediction_log, open_spool

    with _warehouse(settings) as warehouse:
        flushed = flush_prediction_log(open_spool(settings), warehouse)
        progress(f"moved {flushed} logged predictions into the warehouse")
        registry = runtime.open_registry(settings, warehouse)
        report = check_drift(warehouse, registry)
    progress(f"drift: {describe(report)}")
    return report


STAGES: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("ingest", ingest),
    ("transform", transform),
    ("train", train),
    ("score", score),
    ("materialize", materialize),
    ("monitor", monitor),
)


def daily(settings: Settings, progress: Progress = _quiet) -> dict[str, Any]:
    """Every stage in order; the first failing stage stops the run with its error."""
    results: dict[str, Any] = {}
    for name, stage in STAGES:
        progress(f"== {name}")
        results[name] = stage(settings, progress=progress)
    return results


def describe(result: Any) -> str:
    """A one-line description of a stage result for logs and flow artifacts."""
    if hasattr(result, "summary") and callable(result.summary):
        return str(result.summary())
    if hasattr(result, "__dataclass_fields__"):
        return str(asdict(result))
    return str(result)
