"""The prediction log: a durable local spool written off the hot path, flushed to the warehouse.

Requests hand records to :class:`PredictionLogger` (an in-memory queue, never blocking); its
writer thread appends them in batches to :class:`PredictionSpool`, a SQLite file in WAL mode
under ``<data_dir>/prediction_log/``. Several gunicorn workers may share the file. A
committed batch survives the process (a crash, a kill, a restart); with ``fsync`` (setting
``prediction_log_fsync``) it also survives the host losing power, at the price of an fsync
per batch (on the development VM about 90 us of CPU per record, against about 20). :func:`flush_prediction_log` moves spooled rows into ``mlops.prediction_log``
and deletes them from the spool only after the warehouse committed, so a warehouse outage
loses nothing; each batch commits with the spool's watermark, so a crash between commit and
delete cannot deliver a row twice (exactly once).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..filelock import exclusive_lock
from ..warehouse.base import Warehouse, qualified, quote_ident

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

PREDICTION_LOG_TABLE = "mlops.prediction_log"

PREDICTION_LOG_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("predicted_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("customer_id", pa.string()),
        # JSON text: the warehouse interface has no JSON column type mapping that works yet.
        pa.field("features", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
    ]
)
_COLUMNS = tuple(PREDICTION_LOG_SCHEMA.names)


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    predicted_at: dt.datetime
    model_name: str
    model_version: int
    customer_id: str | None
    features: Mapping[str, Any]
    score: float
    latency_ms: float

    def row(self) -> tuple[Any, ...]:
        return (
            self.request_id,
            self.predicted_at.astimezone(dt.UTC).isoformat(),
            self.model_name,
            int(self.model_version),
            self.customer_id,
            json.dumps(dict(self.features), separators=(",", ":"), default=str),
            float(self.score),
            float(self.latency_ms),
        )


class PredictionSpool:
    """Append-only SQLite spool of prediction rows (one connection per thread and process).

    WAL mode; ``fsync=False`` is SQLite's ``synchronous=NORMAL`` (commits reach the OS at
    once and the disk at checkpoints), ``fsync=True`` its ``synchronous=FULL``.
    """

    def __init__(self, path: Path | str, *, timeout_s: float = 10.0, fsync: bool = False) -> None:
        self.fsync = fsync
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            return con
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        con.execute("pragma journal_mode=wal")
        con.execute(f"pragma synchronous={'full' if self.fsync else 'normal'}")
        con.execute("create table if not exists meta (key text primary key, value text)")
        con.execute("insert or ignore into meta values ('spool_id', ?)", [uuid.uuid4().hex])
        con.execute(
            "create table if not exists spool (seq integer primary key autoincrement, "
            "request_id text not null, predicted_at text not null, model_name text not null, "
            "model_version integer not null, customer_id text, features text not null, "
            "score real not null, latency_ms real not null)"
        )
        self._local.con, self._local.pid = con, os.getpid()
        return con

    def append(self, records: list[PredictionRecord]) -> int:
        if not records:
            return 0
        con = self._con()
        cols = ", ".join(_COLUMNS)
        with con:  # one transaction, one fsync
            con.executemany(
                f"insert into spool ({cols}) values ({', '.join('?' * len(_COLUMNS))})",
                [r.row() for r in records],
            )
        return len(records)

    def read_batch(self, limit: int) -> tuple[int, pa.Table]:
        """The oldest ``limit`` rows as Arrow (warehouse schema) and the last ``seq`` read."""
        rows = (
            self._con()
            .execute(f"select seq, {', '.join(_COLUMNS)} from spool order by seq limit ?", [limit])
            .fetchall()
        )
        if not rows:
            return 0, PREDICTION_LOG_SCHEMA.empty_table()
        columns = list(zip(*rows, strict=True))
        arrays = []
        for field, values in zip(PREDICTION_LOG_SCHEMA, columns[1:], strict=True):
            if field.name == "predicted_at":  # ISO 8601 text, parsed by Arrow (not per row)
                arrays.append(pa.array(values, pa.string()).cast(field.type))
            else:
                arrays.append(pa.array(values, field.type))
        return int(columns[0][-1]), pa.Table.from_arrays(arrays, schema=PREDICTION_LOG_SCHEMA)

    @property
    def spool_id(self) -> str:
        """This spool's identity (random, made with the file): its rows' origin in the log."""
        return str(
            self._con().execute("select value from meta where key = 'spool_id'").fetchone()[0]
        )

    def delete_through(self, seq: int) -> None:
        con = self._con()
        with con:
            con.execute("delete from spool where seq <= ?", [seq])

    def count(self) -> int:
        return int(self._con().execute("select count(*) from spool").fetchone()[0])

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def prediction_spool_path(settings: Settings) -> Path:
    return settings.data_dir / "prediction_log" / "spool.sqlite3"


def open_spool(settings: Settings) -> PredictionSpool:
    """The spool of this host, under ``<data_dir>/prediction_log/``."""
    return PredictionSpool(prediction_spool_path(settings), fsync=settings.prediction_log_fsync)


class PredictionLogger:
    """Non-blocking front of the spool: ``log`` enqueues, a daemon thread writes batches.

    The writer commits what arrives within ``linger_s`` (50 ms) together: one transaction
    and fsync per batch. When the queue is full (the disk stalls) records are dropped and
    counted rather than slowing requests down; ``on_drop`` lets the app export that count.
    """

    def __init__(
        self,
        spool: PredictionSpool,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        linger_s: float = 0.05,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.spool = spool
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.on_drop = on_drop
        self.dropped = 0
        self._queue: queue.Queue[PredictionRecord | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def _ensure_thread(self) -> None:
        # Started on first use, so a logger built before a fork gets a thread per process.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="prediction-log", daemon=True
                )
                self._thread.start()
                atexit.register(self.close)

    def log(self, records: list[PredictionRecord]) -> None:
        if self._closed:
            return
        self._ensure_thread()
        for i, record in enumerate(records):
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                lost = len(records) - i
                self.dropped += lost
                if self.on_drop is not None:
                    self.on_drop(lost)
                log.warning("prediction log queue full: dropped %d records", lost)
                return

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[PredictionRecord] = []
            done = 1
            if item is None:
                stop = True
            else:
                batch.append(item)
            # Group commit: gather what arrives within linger_s into one transaction (one
            # fsync), instead of a transaction per record at a moderate request rate.
            deadline = time.monotonic() + self.linger_s
            while not stop and len(batch) < self.batch_size:
                wait = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                done += 1
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            try:
                self.spool.append(batch)
            except Exception:  # keep the thread alive; the records are lost, say so
                self.dropped += len(batch)
                if self.on_drop is not None:
                    self.on_drop(len(batch))
                log.exception("cannot write %d records to the prediction spool", len(batch))
            finally:
                for _ in range(done):
                    self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything logged so far is in the spool; False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout_s)
            thread.join(timeout_s)


FLUSHES_TABLE = "mlops.prediction_log_flushes"
FLUSHES_SCHEMA = pa.schema(
    [
        pa.field("spool_id", pa.string(), nullable=False),
        pa.field("last_seq", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("flushed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def _committed_through(warehouse: Warehouse, spool_id: str) -> int:
    """The last spool sequence number the warehouse committed for ``spool_id`` (0: none)."""
    table = qualified(FLUSHES_TABLE)
    value = warehouse.scalar(
        f"select max({quote_ident('last_seq')}) from {table} where {quote_ident('spool_id')} = ?",
        [spool_id],
    )
    return int(value or 0)


def flush_prediction_log(
    spool: PredictionSpool | Path | str, warehouse: Warehouse, *, batch_rows: int = 10_000
) -> int:
    """Move spooled predictions into ``mlops.prediction_log``; return rows written.

    Each batch is appended in a warehouse transaction and removed from the spool only after
    the commit. If the warehouse fails the error propagates and the spool keeps the rows.
    """
    if not isinstance(spool, PredictionSpool):
        spool = PredictionSpool(spool)
    with _flush_lock(spool.path):
        return _flush(spool, warehouse, batch_rows)


def _flush_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """One flusher per spool at a time (the duplicate check assumes it)."""
    return exclusive_lock(_flush_lock_path(path))


def _flush_lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".flush.lock")


@contextlib.contextmanager
def _try_flush_lock(path: Path) -> Iterator[bool]:
    """Like :func:`_flush_lock` but without waiting: yields whether the lock was taken."""
    lock_path = _flush_lock_path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class PredictionLogFlusher:
    """Moves this host's spool into the warehouse every ``interval_s`` from a daemon thread.

    Every worker of a server runs one; they share the spool file, and the one that gets the
    flush lock does the work while the others skip that round. A warehouse that is down
    leaves the rows in the spool for the next round (``on_error`` is told). The warehouse is
    opened for each round and closed after it.
    """

    def __init__(
        self,
        spool: PredictionSpool,
        open_warehouse: Callable[[], Warehouse],
        interval_s: float,
        *,
        batch_rows: int = 2_000,
        on_flush: Callable[[int], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.spool = spool
        self.open_warehouse = open_warehouse
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.on_flush = on_flush
        self.on_error = on_error
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread of this process (again after a fork)."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            if alive and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="prediction-log-flush", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def run_once(self) -> int | None:
        """One round: rows moved, or ``None`` when another worker holds the lock or it failed."""
        try:
            with _try_flush_lock(self.spool.path) as acquired:
                if not acquired or self.spool.count() == 0:
                    return None if not acquired else 0
                warehouse = self.open_warehouse()
                try:
                    moved = _flush(self.spool, warehouse, self.batch_rows)
                finally:
                    warehouse.close()
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("prediction log flush failed (rows stay spooled): %s", self.last_error)
            if self.on_error is not None:
                self.on_error(exc)
            return None
        self.last_error = None
        if self.on_flush is not None and moved:
            self.on_flush(moved)
        return moved

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            thread.join(timeout_s)


def _flush(spool: PredictionSpool, warehouse: Warehouse, batch_rows: int) -> int:
    """Each batch commits together with its spool watermark (spool id, last sequence number)
    in ``mlops.prediction_log_flushes``; rows leave the spool after that commit. A flush that
    died between the commit and the delete is recognised by the watermark: exactly once,
    without searching the log for request ids."""
    for table, schema in (
        (PREDICTION_LOG_TABLE, PREDICTION_LOG_SCHEMA),
        (FLUSHES_TABLE, FLUSHES_SCHEMA),
    ):
        if not warehouse.columns(table):
            warehouse.create_table(table, schema)
    spool_id = spool.spool_id
    committed = _committed_through(warehouse, spool_id)
    if committed:
        spool.delete_through(committed)  # no-op unless a flush died after its commit
    written = 0
    while True:
        last_seq, batch = spool.read_batch(batch_rows)
        if batch.num_rows == 0:
            return written
        mark = pa.table(
            {
                "spool_id": [spool_id],
                "last_seq": [last_seq],
                "rows": [batch.num_rows],
                "flushed_at": [dt.datetime.now(dt.UTC)],
            },
            schema=FLUSHES_SCHEMA,
        )
        with warehouse.transaction():
            warehouse.append_arrow(PREDICTION_LOG_TABLE, batch)
            warehouse.append_arrow(FLUSHES_TABLE, mark)
        spool.delete_through(last_seq)
        written += batch.num_rows
