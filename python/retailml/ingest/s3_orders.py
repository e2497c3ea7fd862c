"""Order-line exports on S3 (Parquet, CSV, JSON Lines; gzipped or not) into ``raw.order_lines``.

Each object is loaded once, keyed by bucket, key and ETag: its rows, its quarantined records,
its schema-drift report and its ledger row commit in one transaction. A re-uploaded object
(new ETag) replaces what the old version loaded. Objects are listed page by page, downloaded
a few ahead of the one being loaded (the download is pinned to the listed ETag) and streamed
batch by batch into the warehouse, so memory stays flat in the size of the input.

:func:`backfill_s3_orders` re-extracts the ``dt=`` partitions of a date range and replaces
exactly what that range loaded before, in one transaction.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..sources.object_store import ObjectChangedError, ObjectInfo, ObjectStore
from ..warehouse.base import Warehouse
from .conform import JSON_TYPE, RAW_TEXT, DriftNote, arrow_type_of, conform_batch
from .ledger import (
    DRIFT_TABLE,
    LEDGER_TABLE,
    QUARANTINE_TABLE,
    DriftRecord,
    IngestError,
    LoadReport,
    QuarantinedRecord,
    drift_table,
    ensure_bookkeeping,
    ledger_row,
    quarantine_table,
    utcnow,
)
from .readers import BadObjectError, ObjectReader, object_format

TARGET_TABLE = "raw.order_lines"

ORDER_LINE_SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("line_number", pa.int64()),
        ("customer_id", pa.string()),
        ("product_id", pa.string()),
        ("quantity", pa.int64()),
        ("unit_price", pa.float64()),
        ("discount_amount", pa.float64()),
        ("currency", pa.string()),
        ("channel", pa.string()),
        ("ordered_at", pa.timestamp("us")),
        ("exported_at", pa.timestamp("us")),
    ]
)
CONTRACT = tuple(ORDER_LINE_SCHEMA.names)
METADATA_SCHEMA = pa.schema(
    [
        (RAW_TEXT, JSON_TYPE),  # values that did not fit their column's type, as text
        ("_batch_id", pa.string()),
        ("_source_object", pa.string()),
        ("_source_etag", pa.string()),
        ("_extracted_at", pa.timestamp("us", tz="UTC")),
    ]
)
RAW_SCHEMA = pa.schema(list(ORDER_LINE_SCHEMA) + list(METADATA_SCHEMA))

PREFETCH_OBJECTS = 2  # objects downloaded ahead of the ones being loaded
LOAD_WORKERS = 2  # objects loaded at once where the warehouse has more connections
SPOOL_BYTES = 64 << 20  # bigger objects are spooled to a temporary file, not kept in memory
_DT = re.compile(r"(?:^|/)dt=(\d{4}-\d{2}-\d{2})/")

__all__ = [
    "CONTRACT",
    "ORDER_LINE_SCHEMA",
    "RAW_SCHEMA",
    "TARGET_TABLE",
    "BadObjectError",
    "backfill_s3_orders",
    "conform",
    "ingest_s3_orders",
    "object_format",
    "parse_object",
]


# -- pure helpers (also used by tests) ------------------------------------------------------


def conform(table: pa.Table) -> pa.Table:
    """Conform a whole table to the contract (values that do not fit go to ``_raw_text``)."""
    target = {f.name: f.type for f in ORDER_LINE_SCHEMA}
    conformed = conform_batch(table, target, contract=CONTRACT)
    return pa.Table.from_batches([conformed.batch])


def parse_object(key: str, body: bytes) -> tuple[pa.Table, list[QuarantinedRecord]]:
    """Parse one export file whole; return the good rows and the quarantined records."""
    reader = _reader(key, pa.py_buffer(body), {f.name: f.type for f in ORDER_LINE_SCHEMA})
    schema, batches = reader.open()
    return pa.Table.from_batches(list(batches), schema=schema), reader.quarantined


def dt_partition(key: str) -> date | None:
    """The date of a key's ``dt=YYYY-MM-DD/`` partition, if it has one."""
    match = _DT.search(key)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def with_metadata(
    batch: pa.RecordBatch, *, batch_id: str, uri: str, etag: str, extracted_at: datetime
) -> pa.RecordBatch:
    """Append the load-lineage columns; constant per object, so dictionary-encoded."""
    indices = pa.array(np.zeros(batch.num_rows, dtype=np.int8))
    arrays, names = list(batch.columns), list(batch.schema.names)
    for name, value, type_ in (
        ("_batch_id", batch_id, pa.string()),
        ("_source_object", uri, pa.string()),
        ("_source_etag", etag, pa.string()),
        ("_extracted_at", extracted_at, pa.timestamp("us", tz="UTC")),
    ):
        arrays.append(pa.DictionaryArray.from_arrays(indices, pa.array([value], type_)))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _reader(key: str, source: pa.Buffer | pa.NativeFile, target: dict) -> ObjectReader:
    return ObjectReader(key, source, target, CONTRACT, ORDER_LINE_SCHEMA)


# -- downloading ahead --------------------------------------------------------------------


@dataclass
class _Fetched:
    info: ObjectInfo
    source: pa.Buffer | pa.NativeFile | None  # None: changed or deleted since listed
    sha256: str = ""
    spool: Path | None = None

    def release(self) -> None:
        if isinstance(self.source, pa.NativeFile):
            self.source.close()
        self.source = None
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)


def _download(objects: ObjectStore, info: ObjectInfo, spool_bytes: int) -> _Fetched:
    """The object's bytes as listed (pinned to its ETag), in memory or spooled to disk."""
    try:
        if info.size <= spool_bytes:
            body = objects.get(info.key, if_match=info.etag)
            return _Fetched(info, pa.py_buffer(body), hashlib.sha256(body).hexdigest())
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(prefix="retailml-s3-", delete=False) as spool:
            stream = objects.open(info.key, if_match=info.etag)
            while chunk := stream.read(8 << 20):
                digest.update(chunk)
                spool.write(chunk)
        return _Fetched(info, pa.memory_map(spool.name), digest.hexdigest(), Path(spool.name))
    except ObjectChangedError:
        return _Fetched(info, None)


class _Prefetcher:
    """Yields the listed objects' downloads in listing order, ``depth`` objects ahead."""

    def __init__(
        self, objects: ObjectStore, infos: Iterable[ObjectInfo], depth: int, *, release: bool = True
    ) -> None:
        self._release = release  # False: the consumer releases each object when done
        self._objects = objects
        self._infos = iter(infos)
        self._depth = max(1, depth)
        self._pool = ThreadPoolExecutor(self._depth, thread_name_prefix="retailml-s3-get")
        self._window: deque[Future[_Fetched]] = deque()

    def _fill(self) -> None:
        while len(self._window) < self._depth:
            info = next(self._infos, None)
            if info is None:
                return
            self._window.append(self._pool.submit(_download, self._objects, info, SPOOL_BYTES))

    def __iter__(self) -> Iterator[_Fetched]:
        self._fill()
        while self._window:
            fetched = self._window.popleft().result()
            self._fill()
            try:
                yield fetched
            finally:
                if self._release:
                    fetched.release()

    def close(self) -> None:
        for future in self._window:
            future.cancel()
        self._pool.shutdown(wait=True)
        for future in self._window:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()
        self._window.clear()


# -- loading ------------------------------------------------------------------------------


@dataclass
class _State:
    """What the warehouse holds, read once per run."""

    target: dict[str, pa.DataType]  # raw column -> Arrow type values are conformed to
    ledger: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # uri -> version etc.


def _prepare(warehouse: Warehouse) -> dict[str, pa.DataType]:
    ensure_bookkeeping(warehouse)
    warehouse.create_table(TARGET_TABLE, RAW_SCHEMA)
    existing = warehouse.columns(TARGET_TABLE)
    missing = [f for f in METADATA_SCHEMA if f.name not in existing]
    if missing:  # a table from an earlier version of the loader
        warehouse.add_columns(TARGET_TABLE, pa.schema(missing))
        existing = warehouse.columns(TARGET_TABLE)
    return _conform_target(existing)


def _conform_target(columns: dict[str, str]) -> dict[str, pa.DataType]:
    contract = {f.name: f.type for f in ORDER_LINE_SCHEMA}
    return {
        name: contract.get(name, arrow_type_of(type_name))
        for name, type_name in columns.items()
        if not name.startswith("_")
    }


def _ledger_state(warehouse: Warehouse, bucket: str) -> dict[str, tuple[str, str, int]]:
    """uri -> (version, status, row_count) of the latest ledger row of each S3 object."""
    rows = warehouse.query_arrow(
        f"select object_key, object_version, status, row_count from {LEDGER_TABLE} "
        "where source = 's3' and object_key like ? order by loaded_at",
        [f"s3://{bucket}/%"],
    ).to_pylist()
    return {
        r["object_key"]: (r["object_version"] or "", r["status"], r["row_count"] or 0) for r in rows
    }


def _is_current(entry: tuple[str, str, int] | None, etag: str) -> bool:
    return entry is not None and entry[0] == etag and entry[1] in ("loaded", "quarantined")


def _lock(warehouse: Warehouse, key: str) -> None:
    """Serialise concurrent runs on ``key`` until the transaction ends (where supported)."""
    lock = getattr(warehouse, "advisory_lock", None)
    if lock is not None:
        lock(key)


def _claim(warehouse: Warehouse, uri: str, etag: str) -> bool:
    """Inside the object's transaction: lock the object's key and confirm no concurrent run
    loaded this version meanwhile."""
    _lock(warehouse, uri)
    latest = warehouse.scalar(
        f"select object_version || '|' || status from {LEDGER_TABLE} where object_key = ? "
        "order by loaded_at desc limit 1",
        [uri],
    )
    return latest is None or latest.split("|")[0] != etag or latest.endswith("|removed")


class _SchemaLock:
    """One schema change of the raw table at a time across workers, held from the change
    until the changing transaction ends (two transactions altering one table deadlock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = threading.local()

    def hold(self) -> None:
        if not getattr(self._owner, "held", False):
            self._lock.acquire()
            self._owner.held = True

    def release(self) -> None:
        if getattr(self._owner, "held", False):
            self._owner.held = False
            self._lock.release()


@dataclass
class _Outcome:
    status: str  # 'loaded', 'quarantined', 'skipped', 'changed'
    rows: int = 0
    replaced: int = 0
    quarantined: list[QuarantinedRecord] = field(default_factory=list)
    drift: list[DriftRecord] = field(default_factory=list)
    new_columns: list[pa.Field] = field(default_factory=list)


def _write_object(
    warehouse: Warehouse,
    fetched: _Fetched,
    *,
    bucket: str,
    batch_id: str,
    state: _State,
    target: dict[str, pa.DataType],
    known_bad: str | None = None,
    locked: bool = False,
    schema_lock: _SchemaLock | None = None,
) -> _Outcome:
    """Load one fetched object inside the caller's transaction: replace what an earlier
    version loaded, COPY the rows, write quarantine, drift and ledger rows.

    ``target`` (the raw columns' types) is the transaction's own copy: new columns are added
    to it. With ``schema_lock``, adding columns first takes that lock, held until the caller's
    transaction ends, before this transaction touches the table.

    Raises BadObjectError when the object turns out unreadable after rows were sent; the
    caller rolls back and calls again with ``known_bad`` set to quarantine it whole."""
    info = fetched.info
    uri = f"s3://{bucket}/{info.key}"
    if not locked:
        _lock(warehouse, uri)
    error = known_bad
    reader: ObjectReader | None = None
    batches: Iterator[pa.RecordBatch] = iter(())
    new: list[pa.Field] = []
    if error is None:
        assert fetched.source is not None
        try:
            reader = _reader(info.key, fetched.source, target)
            schema, batches = reader.open()
            new = [f for f in schema if f.name not in target and f.name != RAW_TEXT]
        except BadObjectError as exc:
            error = str(exc)

    previous = state.ledger.get(uri)
    replaced = previous[2] if previous is not None and previous[1] == "loaded" else 0
    outcome = _Outcome("quarantined" if error else "loaded", replaced=replaced)
    if new:  # schema drift: a new column in the export becomes a new raw column
        if schema_lock is not None:
            schema_lock.hold()
        warehouse.add_columns(TARGET_TABLE, pa.schema(new))
        outcome.new_columns = new
        target.update({f.name: _value_type(f.type) for f in new})
    if previous is not None:
        warehouse.execute(f"delete from {TARGET_TABLE} where _source_object = ?", [uri])
    if error is not None:
        outcome.quarantined = [QuarantinedRecord(uri, error)]
    else:
        assert reader is not None
        extracted_at = utcnow()
        try:
            outcome.rows = warehouse.append_arrow(
                TARGET_TABLE,
                (
                    with_metadata(
                        b, batch_id=batch_id, uri=uri, etag=info.etag, extracted_at=extracted_at
                    )
                    for b in batches
                ),
            )
        except BadObjectError as exc:
            exc.uri = uri  # type: ignore[attr-defined]  # which object, for the caller
            raise
        outcome.quarantined = [
            QuarantinedRecord(q.object_key.replace(info.key, uri, 1), q.error, q.record)
            if not q.object_key.startswith("s3://")
            else q
            for q in reader.quarantined
        ]
        notes = [
            *(DriftNote(f.name, "added", None, str(f.type)) for f in new),
            *reader.drift.values(),
        ]
        outcome.drift = [
            DriftRecord(
                uri,
                TARGET_TABLE,
                n.column,
                n.change,
                n.expected_type,
                n.found_type,
                n.rows_as_text,
                n.describe(),
            )
            for n in notes
        ]
    if outcome.quarantined:
        warehouse.append_arrow(
            QUARANTINE_TABLE, quarantine_table(batch_id, "s3", outcome.quarantined)
        )
    if outcome.drift:
        warehouse.append_arrow(DRIFT_TABLE, drift_table(batch_id, outcome.drift))
    warehouse.append_arrow(
        LEDGER_TABLE,
        ledger_row(
            batch_id=batch_id,
            source="s3",
            target_table=TARGET_TABLE,
            object_key=uri,
            object_version=info.etag,
            status=outcome.status,
            row_count=outcome.rows,
            checksum=fetched.sha256,
        ),
    )
    return outcome


def _commit(warehouse: Warehouse, state: _State, uri: str, etag: str, outcome: _Outcome) -> None:
    """After a commit: remember what the warehouse now holds."""
    if outcome.new_columns:
        state.target = _conform_target(warehouse.columns(TARGET_TABLE))
    state.ledger[uri] = (etag, outcome.status, outcome.rows)


def _value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def _record(report: LoadReport, outcome: _Outcome) -> None:
    if outcome.status in ("loaded", "quarantined"):
        report.objects_loaded += 1
    report.add_rows(TARGET_TABLE, outcome.rows)
    report.rows_replaced += outcome.replaced
    report.quarantined.extend(outcome.quarantined)
    report.drift.extend(outcome.drift)


def _describe(key: str, outcome: _Outcome) -> str:
    if outcome.status == "changed":
        return f"skipped {key}: changed since listed (the next run loads the new version)"
    if outcome.status == "skipped":
        return f"skipped {key}: loaded meanwhile by another run"
    text = f"loaded {key}: {outcome.rows} rows"
    if outcome.status == "quarantined":
        text = f"QUARANTINED {key}: {outcome.quarantined[0].error}"
    elif outcome.quarantined:
        text += f", {len(outcome.quarantined)} quarantined"
    if outcome.drift:
        text += f", schema drift: {'; '.join(d.description for d in outcome.drift)}"
    return text


def ingest_s3_orders(
    warehouse: Warehouse,
    objects: ObjectStore,
    *,
    prefix: str,
    batch_id: str,
    keys: Callable[[ObjectInfo], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    prefetch: int = PREFETCH_OBJECTS,
    workers: int = LOAD_WORKERS,
) -> LoadReport:
    """Load every new or changed export object under ``prefix``, one transaction each.

    Where the warehouse can open more connections (``fork``; PostgreSQL), ``workers``
    objects load at once, each on its own connection: one object's commit and set-up then
    overlap another's COPY, and the server ingests on more than one core."""
    state = _State(_prepare(warehouse))
    state.ledger = _ledger_state(warehouse, objects.bucket)
    report = LoadReport(batch_id)
    guard = threading.Lock()  # report, state, and the prefetcher are shared by the workers
    schema_lock = _SchemaLock()

    def todo() -> Iterator[ObjectInfo]:
        for info in objects.list(prefix):
            if keys is not None and not keys(info):
                continue
            if _is_current(state.ledger.get(f"s3://{objects.bucket}/{info.key}"), info.etag):
                report.objects_skipped += 1
                continue
            yield info

    def work(connection: Warehouse, queue: Iterator[_Fetched], stop: threading.Event) -> None:
        while not stop.is_set():
            with guard:
                fetched = next(queue, None)
            if fetched is None:
                return
            try:
                outcome = _load_one(
                    connection, fetched, objects.bucket, batch_id, state, guard, schema_lock
                )
            finally:
                fetched.release()
            with guard:
                _record(report, outcome)
            if progress:
                progress(_describe(fetched.info.key, outcome))

    fork = getattr(warehouse, "fork", None)
    connections = [warehouse] + [fork() for _ in range(workers - 1)] if fork else [warehouse]
    prefetcher = _Prefetcher(objects, todo(), prefetch + len(connections) - 1, release=False)
    queue = iter(prefetcher)
    stop = threading.Event()
    try:
        if len(connections) == 1:
            work(warehouse, queue, stop)
        else:
            with ThreadPoolExecutor(len(connections), thread_name_prefix="retailml-load") as pool:
                futures = [pool.submit(work, c, queue, stop) for c in connections]
                try:
                    for future in futures:
                        future.result()
                finally:
                    stop.set()
    finally:
        prefetcher.close()
        for connection in connections[1:]:
            connection.close()
    return report


def _load_one(
    warehouse: Warehouse,
    fetched: _Fetched,
    bucket: str,
    batch_id: str,
    state: _State,
    guard: threading.Lock,
    schema_lock: _SchemaLock,
) -> _Outcome:
    """One object in its own transaction (retried once, quarantined whole, when it turns out
    unreadable midway)."""
    uri = f"s3://{bucket}/{fetched.info.key}"
    if fetched.source is None:
        return _Outcome("changed")
    known_bad: str | None = None
    for _ in range(2):
        with guard:
            target = dict(state.target)
        try:
            with warehouse.transaction():
                if not _claim(warehouse, uri, fetched.info.etag):
                    return _Outcome("skipped")
                outcome = _write_object(
                    warehouse,
                    fetched,
                    bucket=bucket,
                    batch_id=batch_id,
                    state=state,
                    target=target,
                    known_bad=known_bad,
                    locked=True,
                    schema_lock=schema_lock,
                )
        except BadObjectError as exc:
            known_bad = str(exc)
            continue
        finally:
            schema_lock.release()
        with guard:
            _commit(warehouse, state, uri, fetched.info.etag, outcome)
        return outcome
    raise AssertionError("unreachable: a known-bad object is quarantined without reading")


# -- backfill -------------------------------------------------------------------------------


def backfill_s3_orders(
    warehouse: Warehouse,
    objects: ObjectStore,
    *,
    prefix: str,
    start: date,
    end: date,
    batch_id: str,
    progress: Callable[[str], None] | None = None,
    prefetch: int = PREFETCH_OBJECTS,
) -> LoadReport:
    """Re-extract the ``dt=`` partitions from ``start`` to ``end`` (inclusive).

    In one transaction: every object now in those partitions replaces what any version of
    it loaded before; objects loaded before that are gone from S3 have their rows removed
    (ledger status ``removed``). Readers never see a half-replaced range; a crash leaves the
    range as it was. Objects that turn out unreadable are quarantined whole."""
    if end < start:
        raise IngestError(f"backfill range is empty: {start} is after {end}")
    state = _State(_prepare(warehouse))
    state.ledger = _ledger_state(warehouse, objects.bucket)
    base = f"s3://{objects.bucket}/"

    def in_range(key: str) -> bool:
        day = dt_partition(key[len(prefix) :]) if key.startswith(prefix) else None
        return day is not None and start <= day <= end

    previously = {
        uri
        for uri, (_, status, _) in state.ledger.items()
        if uri.startswith(base) and status != "removed" and in_range(uri[len(base) :])
    }
    known_bad: dict[str, str] = {}
    while True:
        report = LoadReport(batch_id)
        seen: set[str] = set()
        outcomes: list[tuple[str, str, _Outcome]] = []
        prefetcher = _Prefetcher(objects, _partition_listing(objects, prefix, start, end), prefetch)
        target = dict(state.target)  # this transaction's view of the raw columns
        try:
            with warehouse.transaction():
                lock = getattr(warehouse, "advisory_lock", None)
                if lock is not None:
                    lock(f"backfill:{base}{prefix}")
                for fetched in prefetcher:
                    uri = base + fetched.info.key
                    seen.add(uri)
                    if fetched.source is None:
                        raise ObjectChangedError(f"{uri} changed during the backfill: rerun it")
                    outcome = _write_object(
                        warehouse,
                        fetched,
                        bucket=objects.bucket,
                        batch_id=batch_id,
                        state=state,
                        target=target,
                        known_bad=known_bad.get(uri),
                    )
                    outcomes.append((uri, fetched.info.etag, outcome))
                    _record(report, outcome)
                    if progress:
                        progress("backfill: " + _describe(fetched.info.key, outcome))
                for uri in sorted(previously - seen):
                    report.rows_replaced += state.ledger[uri][2]
                    report.objects_removed += 1
                    _remove(warehouse, uri, batch_id)
                    if progress:
                        progress(f"backfill: removed the rows of {uri} (gone from S3)")
        except BadObjectError as exc:
            # found unreadable midway: roll back, redo the range with it quarantined
            uri = getattr(exc, "uri", "")
            if not uri or uri in known_bad:
                raise
            known_bad[uri] = str(exc)
            if progress:
                progress(f"backfill: {uri} is unreadable ({exc}); redoing the range without it")
            continue
        finally:
            prefetcher.close()
        for uri, etag, outcome in outcomes:
            _commit(warehouse, state, uri, etag, outcome)
        for uri in previously - seen:
            state.ledger[uri] = ("", "removed", 0)
        return report


def _partition_listing(
    objects: ObjectStore, prefix: str, start: date, end: date
) -> Iterator[ObjectInfo]:
    """Objects of the ``dt=`` partitions in ``[start, end]``, listed from the first one."""
    for info in objects.list(prefix, start_after=f"{prefix}dt={start.isoformat()}"):
        day = dt_partition(info.key[len(prefix) :])
        if day is None:
            continue
        if day > end:
            return
        if day >= start:
            yield info


def _remove(warehouse: Warehouse, uri: str, batch_id: str) -> None:
    warehouse.execute(f"delete from {TARGET_TABLE} where _source_object = ?", [uri])
    warehouse.append_arrow(
        LEDGER_TABLE,
        ledger_row(
            batch_id=batch_id,
            source="s3",
            target_table=TARGET_TABLE,
            object_key=uri,
            object_version="",
            status="removed",
            row_count=0,
            checksum="",
        ),
    )
