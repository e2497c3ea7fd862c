"""What the scheduler needs besides the stages: one pipeline run at a time, and which errors
are worth a retry.

:func:`pipeline_lock` serialises the runs that write the warehouse (``daily``, ``backfill``,
the retrain check) across processes, whoever starts them: the CLI, a plain
``python -m flows.pipeline`` (which starts its own temporary Prefect server, so a Prefect
concurrency limit alone cannot see it) or a Prefect worker. It holds an exclusive ``flock``
on ``<data_dir>/locks/<name>.lock`` and, when the warehouse is PostgreSQL, a session advisory
lock in that database as well (which also covers workers on other hosts). A second run waits
up to ``wait_seconds`` and then fails with :class:`PipelineBusyError` naming the holder.
Every acquisition and release is appended to ``<data_dir>/locks/<name>.history.jsonl``.

:func:`is_transient` tells I/O failures a retry can cure (a connection refused or reset, a
timeout, a throttled request, a DuckDB file locked by another process) from deterministic
ones (bad input, a failing dbt test, a model that cannot be trained), which must fail at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import Settings

Progress = Callable[[str], None]

#: The lock of the runs that write the warehouse (daily, backfill, retrain check).
PIPELINE_LOCK = "pipeline"
_WAIT_REPORT_SECONDS = 30.0
# Locks this context (thread, task, subflow started from it) already holds: a flow that
# holds the pipeline lock calls stage flows that take it too.
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "retailml_held_locks", default=frozenset()
)


class PipelineBusyError(RuntimeError):
    """Another run holds the pipeline lock; ``holder`` says who (pid, host, run, since)."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def _quiet(_: str) -> None:
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def current_run_label() -> str:
    """The Prefect flow run this code runs in (``flow/run-name id``), else the command line."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is not None and context.flow_run is not None:
            run = context.flow_run
            return f"flow run {context.flow.name}/{run.name} ({run.id})"
    except Exception:  # Prefect missing or outside any run: describe the process instead
        pass
    return "process " + " ".join(os.path.basename(a) for a in sys.argv[:3])


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown holder (no holder record yet)"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('run')}) "
        f"since {holder.get('since')}"
    )


def advisory_key(name: str) -> int:
    """The signed 64-bit PostgreSQL advisory lock key of lock ``name``."""
    digest = hashlib.sha256(f"retailml:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class _FileLock:
    path: Path
    fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def holder(self) -> dict[str, Any]:
        try:
            text = self.path.read_text().strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {}

    def write_holder(self, holder: dict[str, Any]) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(holder).encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _AdvisoryLock:
    """A session-level PostgreSQL advisory lock on its own autocommit connection."""

    def __init__(self, settings: Settings, name: str, holder: dict[str, Any]) -> None:
        import psycopg

        from .warehouse.postgres import conninfo, ensure_database

        ensure_database(settings)
        label = f"retailml-lock {name} pid={holder['pid']} host={holder['host']}"
        self.key = advisory_key(name)
        self.database = settings.pg_database
        self.con = psycopg.connect(conninfo(settings), autocommit=True, application_name=label[:63])

    def try_acquire(self) -> bool:
        row = self.con.execute("select pg_try_advisory_lock(%s)", [self.key]).fetchone()
        return bool(row and row[0])

    def holder(self) -> str:
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        row = self.con.execute(
            "select a.pid, a.application_name, a.client_addr::text, a.backend_start "
            "from pg_locks l join pg_stat_activity a on a.pid = l.pid "
            "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
            "and l.classid::bigint = %s and l.objid::bigint = %s",
            [unsigned >> 32, unsigned & 0xFFFFFFFF],
        ).fetchone()
        if row is None:
            return f"an advisory lock in database {self.database!r}"
        pid, application, address, started = row
        return (
            f"PostgreSQL backend {pid} ({application or 'no application name'}, "
            f"from {address or 'a local socket'}, connected {started}) in database "
            f"{self.database!r}"
        )

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.con.execute("select pg_advisory_unlock(%s)", [self.key])
        with contextlib.suppress(Exception):
            self.con.close()


def lock_path(settings: Settings, name: str = PIPELINE_LOCK) -> Path:
    return settings.data_dir / "locks" / f"{name}.lock"


def lock_history(settings: Settings, name: str = PIPELINE_LOCK) -> list[dict[str, Any]]:
    """The acquisitions and releases of lock ``name``, oldest first."""
    path = lock_path(settings, name).with_suffix(".history.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record(settings: Settings, name: str, event: str, holder: dict[str, Any]) -> None:
    path = lock_path(settings, name).with_suffix(".history.jsonl")
    line = json.dumps({"event": event, "at": _now(), **holder}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())  # one O_APPEND write: lines never interleave
    finally:
        os.close(fd)


@contextlib.contextmanager
def pipeline_lock(
    settings: Settings,
    name: str = PIPELINE_LOCK,
    *,
    wait_seconds: float = 0.0,
    progress: Progress = _quiet,
    poll_seconds: float = 0.5,
) -> Iterator[dict[str, Any]]:
    """Hold lock ``name`` for the block; wait up to ``wait_seconds`` for another holder,
    then raise :class:`PipelineBusyError`. Re-entering in the same context is a no-op."""
    key = f"{settings.data_dir.resolve()}::{name}"
    held = _HELD.get()
    if key in held:
        yield {}
        return
    if wait_seconds < 0:
        raise ValueError("wait_seconds must be >= 0")
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "run": current_run_label(),
        "since": "",
    }
    file_lock = _FileLock(lock_path(settings, name))
    advisory: _AdvisoryLock | None = None
    deadline = time.monotonic() + wait_seconds
    next_report = time.monotonic()
    acquired = False
    try:
        while True:
            blocker = None
            if not file_lock.try_acquire():
                blocker = _describe(file_lock.holder())
            elif settings.warehouse == "postgres":
                advisory = advisory or _AdvisoryLock(settings, name, holder)
                if not advisory.try_acquire():
                    blocker = advisory.holder()
                    file_lock.release()  # let the other host's waiter see a free file
            if blocker is None:
                break
            now = time.monotonic()
            if now >= deadline:
                raise PipelineBusyError(
                    f"another retailml run holds the {name} lock: {blocker}; gave up after "
                    f"waiting {wait_seconds:g}s ({file_lock.path}). Let it finish, or wait "
                    "longer (lock_wait_seconds / --wait).",
                    file_lock.holder(),
                )
            if now >= next_report:
                progress(
                    f"waiting up to {deadline - now:.0f}s more for the {name} lock held by "
                    f"{blocker}"
                )
                next_report = now + _WAIT_REPORT_SECONDS
            time.sleep(min(poll_seconds, max(deadline - now, 0.01)))
        holder["since"] = _now()
        file_lock.write_holder(holder)
        acquired = True
        _record(settings, name, "acquired", holder)
        progress(f"holding the {name} lock ({file_lock.path})")
        token = _HELD.set(held | {key})
        try:
            yield holder
        finally:
            _HELD.reset(token)
    finally:
        if acquired:
            _record(settings, name, "released", holder)
        if advisory is not None:
            advisory.release()
        file_lock.release()


# -- which failures deserve a retry -------------------------------------------------------
_NOT_TRANSIENT_OS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
_TRANSIENT_S3_CODES = {
    "Throttling",
    "ThrottlingException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
_TRANSIENT_PG_STATES = {"40001", "40P01", "53300", "57P01", "57P02", "57P03"}


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, PipelineBusyError):
        return False  # the lock already waited as long as it was told to
    if isinstance(exc, _NOT_TRANSIENT_OS):
        return False
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, socket errors
        return True
    module = (type(exc).__module__ or "").lstrip("_")
    name = type(exc).__name__
    if module.startswith("botocore"):
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        if isinstance(exc, ConnectionError | HTTPClientError):
            return True
        if isinstance(exc, ClientError):
            return str(exc.response.get("Error", {}).get("Code")) in _TRANSIENT_S3_CODES
        return False
    if module.startswith("pymongo"):
        from pymongo.errors import AutoReconnect, ConnectionFailure, NetworkTimeout

        return isinstance(exc, AutoReconnect | ConnectionFailure | NetworkTimeout)
    if module.startswith("psycopg"):
        import psycopg

        state = getattr(exc, "sqlstate", None)
        if state in _TRANSIENT_PG_STATES:
            return True
        # A failed connection has no SQLSTATE; server-side errors (bad SQL, constraint,
        # missing database or role) do and are not cured by waiting.
        return isinstance(exc, psycopg.OperationalError) and state is None
    if module.startswith("redis"):
        from redis.exceptions import ConnectionError, TimeoutError

        return isinstance(exc, ConnectionError | TimeoutError)
    if module.startswith("duckdb"):
        # Another process holds the DuckDB file ("Could not set lock on file").
        return name == "IOException" and "lock" in str(exc).lower()
    if module.startswith("google"):
        return name in {
            "ServiceUnavailable",
            "TooManyRequests",
            "InternalServerError",
            "BadGateway",
            "GatewayTimeout",
            "DeadlineExceeded",
            "RetryError",
        }
    return False


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` or an error it was raised from is an I/O failure a retry can cure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_transient_one(current):
            return True
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return False
