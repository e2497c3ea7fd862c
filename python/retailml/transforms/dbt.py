"""Runs the dbt project in-process with dbt's programmatic runner (``dbtRunner``).

The target is the configured warehouse; the profile reads the same ``RETAILML_*`` variables
as everything else. A failing model or test fails the call with the nodes named.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..config import Settings


class DbtError(RuntimeError):
    """dbt did not succeed; ``failures`` names the failing nodes."""

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


@dataclass
class DbtRunSummary:
    command: str
    statuses: dict[str, int] = field(default_factory=dict)
    nodes: int = 0

    def __str__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        return f"dbt {self.command}: {self.nodes} nodes ({counts})"


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def dbt_args(settings: Settings, command: Sequence[str]) -> list[str]:
    project = settings.dbt_dir
    return [
        *command,
        "--quiet",  # dbt's node-by-node log goes to the log file; failures are raised below
        "--project-dir",
        str(project),
        "--profiles-dir",
        str(project.parent / "profiles"),
        "--target",
        settings.warehouse,
        # artifacts and logs per data dir, so separate runs never share dbt_project/target
        "--target-path",
        str((settings.data_dir / "dbt" / "target").resolve()),
        "--log-path",
        str((settings.data_dir / "dbt" / "logs").resolve()),
    ]


def run_dbt(
    settings: Settings,
    command: Sequence[str],
    *,
    progress: Callable[[str], None] | None = None,
) -> DbtRunSummary:
    """Invoke ``dbt <command>`` against the configured warehouse; raise DbtError on failure."""
    from dbt.cli.main import dbtRunner

    if settings.warehouse == "postgres" and list(command[:1]) != ["parse"]:
        from ..warehouse.postgres import ensure_database

        ensure_database(settings)
    env = settings.dbt_env()
    env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    with _environment(env):
        result = dbtRunner().invoke(dbt_args(settings, command))
    summary = DbtRunSummary(command=" ".join(command))
    failures: list[str] = []
    for node_result in getattr(result.result, "results", None) or []:
        status = str(node_result.status)
        summary.statuses[status] = summary.statuses.get(status, 0) + 1
        summary.nodes += 1
        if status in {"error", "fail", "runtime error"}:
            failures.append(f"{node_result.node.unique_id}: {node_result.message}")
    if progress:
        progress(str(summary))
    if not result.success:
        detail = "; ".join(failures) or str(result.exception or "see dbt's log above")
        raise DbtError(f"dbt {' '.join(command)} failed: {detail}", failures)
    return summary
