"""Prefect flows: one per pipeline stage, and ``daily`` chaining them.

Business logic lives in ``retailml.pipeline``; these flows add retries on I/O, logging and a
markdown artifact per run. They run as plain Python with no Prefect server (Prefect starts a
temporary local one), e.g. ``python -m flows.pipeline daily``.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from retailml import pipeline
from retailml.config import Settings, load_settings


def _logger_progress() -> pipeline.Progress:
    logger = get_run_logger()
    return logger.info


@task(retries=2, retry_delay_seconds=[5, 30])
def ingest_task(settings: Settings) -> str:
    return pipeline.describe(pipeline.ingest(settings, progress=_logger_progress()))


@task
def transform_task(settings: Settings) -> str:
    return pipeline.describe(pipeline.transform(settings, progress=_logger_progress()))


@task
def train_task(settings: Settings) -> str:
    results = pipeline.train(settings, progress=_logger_progress())
    for name, result in results.items():
        _attach_model_reports(name, result.version)
    return "; ".join(f"{name}: {pipeline.describe(r)}" for name, r in results.items())


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


@task(retries=1, retry_delay_seconds=10)
def score_task(settings: Settings) -> str:
    return pipeline.describe(pipeline.score(settings, progress=_logger_progress()))


@task(retries=2, retry_delay_seconds=[5, 30])
def materialize_task(settings: Settings) -> str:
    return pipeline.describe(pipeline.materialize(settings, progress=_logger_progress()))


@task
def monitor_task(settings: Settings) -> str:
    return pipeline.describe(pipeline.monitor(settings, progress=_logger_progress()))


TASKS = {
    "ingest": ingest_task,
    "transform": transform_task,
    "train": train_task,
    "score": score_task,
    "materialize": materialize_task,
    "monitor": monitor_task,
}


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings()


@flow(name="simulate")
def simulate_flow(days: int = 1, settings: Settings | None = None) -> str:
    """The simulated shop's next ``days`` of exports and document changes (stands in for the
    systems that write S3 and MongoDB in production)."""
    options = pipeline.SimulateOptions(days=days)
    summary = pipeline.simulate(_settings(settings), options, progress=_logger_progress())
    return f"{summary.order_lines} order lines over {summary.days} days"


@flow(name="ingest")
def ingest_flow(settings: Settings | None = None) -> str:
    return ingest_task(_settings(settings))


@flow(name="transform")
def transform_flow(settings: Settings | None = None) -> str:
    return transform_task(_settings(settings))


@flow(name="train")
def train_flow(settings: Settings | None = None) -> str:
    return train_task(_settings(settings))


@flow(name="score")
def score_flow(settings: Settings | None = None) -> str:
    return score_task(_settings(settings))


@flow(name="materialize")
def materialize_flow(settings: Settings | None = None) -> str:
    return materialize_task(_settings(settings))


@flow(name="monitor")
def monitor_flow(settings: Settings | None = None) -> str:
    return monitor_task(_settings(settings))


@flow(name="daily")
def daily_flow(settings: Settings | None = None) -> dict[str, Any]:
    """ingest -> transform -> train -> score -> materialize -> monitor, stopping at a failure."""
    settings = _settings(settings)
    results = {name: stage(settings) for name, stage in TASKS.items()}
    rows = "\n".join(f"| {name} | {text} |" for name, text in results.items())
    create_markdown_artifact(key="daily-run", markdown=f"| stage | result |\n|---|---|\n{rows}\n")
    return results


FLOWS = {
    "simulate": simulate_flow,
    "ingest": ingest_flow,
    "transform": transform_flow,
    "train": train_flow,
    "score": score_flow,
    "materialize": materialize_flow,
    "monitor": monitor_flow,
    "daily": daily_flow,
}

if __name__ == "__main__":
    FLOWS[sys.argv[1] if len(sys.argv) > 1 else "daily"]()
