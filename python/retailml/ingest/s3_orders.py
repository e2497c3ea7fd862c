"""Order-line exports on S3 (Parquet, CSV, JSON Lines; gzipped or not) into ``raw.order_lines``.

Each object is loaded once, keyed by bucket, key and ETag: its rows, its quarantined records,
its schema-drift report and its ledger row commit in one transaction (a few megabytes of
objects share one transaction and one COPY). A re-uploaded object (new ETag) replaces what
the old version loaded. Objects are listed page by page, downloaded a few ahead of the one
being loaded (the download is pinned to the listed ETag) and streamed batch by batch into
the warehouse, so memory stays flat in the size of the input.

Every raw row carries ``_load_id`` (its object's ledger row: batch id, ``s3://bucket/key``,
ETag, row count, checksum) and ``_extracted_at``; 16 bytes of lineage per row instead of the
~120 that the batch id, URI and ETag as text would add to every row the server writes.

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
    ensure_table,
    ledger_row,
    ledger_rows,
    new_load_id,
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
        ("_load_id", pa.int64()),  # raw._load_ledger.load_id: batch, object, ETag
        ("_extracted_at", pa.timestamp("us", tz="UTC")),
    ]
)
RAW_SCHEMA = pa.schema(list(ORDER_LINE_SCHEMA) + list(METADATA_SCHEMA))

PREFETCH_OBJECTS = 2  # objects downloaded ahead of the ones being loaded
LOAD_WORKERS = 2  # groups loaded at once where the warehouse has more connections
GROUP_BYTES = 4 << 20  # objects of about this many bytes share a transaction and a COPY
GROUP_OBJECTS = 256  # and at most this many
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


def with_metadata(batch: pa.RecordBatch, *, load_id: int, extracted_at: datetime) -> pa.RecordBatch:
    """Append the load-lineage columns; constant per object, so dictionary-encoded."""
    indices = pa.array(np.zeros(batch.num_rows, dtype=np.int8))
    arrays, names = list(batch.columns), list(batch.schema.names)
    for name, value, type_ in (
        ("_load_id", load_id, pa.int64()),
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
    legacy: bool = False  # the raw table still has a _source_object column (older loader)


def _prepare(warehouse: Warehouse) -> _State:
    ensure_bookkeeping(warehouse)
    ensure_table(warehouse, TARGET_TABLE, RAW_SCHEMA)
    existing = warehouse.columns(TARGET_TABLE)
    return _State(_conform_target(existing), legacy="_source_object" in existing)


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
        "where source = 's3' and object_key like ? order by loaded_at, load_id",
        [f"s3://{bucket}/%"],
    ).to_pylist()
    return {
        r["object_key"]: (r["object_version"] or "", r["status"], r["row_count"] or 0) for r in rows
    }


def _is_current(entry: tuple[str, str, int] | None, etag: str) -> bool:
    return entry is not None and entry[0] == etag and entry[1] in ("loaded", "quarantined")


def _lock(warehouse: Warehouse, *keys: str) -> None:
    """Serialise concurrent runs on ``keys`` until the transaction ends (where supported).
    Taken in sorted order in one statement, so two runs never wait on each other in a cycle."""
    lock = getattr(warehouse, "advisory_lock", None)
    if lock is not None and keys:
        lock(*sorted(set(keys)))


def _claim(warehouse: Warehouse, wanted: dict[str, str]) -> dict[str, tuple[str, str, int] | None]:
    """Inside the group's transaction: lock the objects' keys, then read their latest ledger
    rows. Returns uri -> latest (version, status, row_count) for the objects (``wanted``:
    uri -> ETag) that no concurrent run loaded in this version meanwhile."""
    uris = sorted(wanted)
    _lock(warehouse, *uris)
    latest: dict[str, tuple[str, str, int]] = {}
    for start in range(0, len(uris), 500):
        chunk = uris[start : start + 500]
        rows = warehouse.query_arrow(
            f"select object_key, object_version, status, row_count from {LEDGER_TABLE} "
            f"where object_key in ({', '.join('?' * len(chunk))}) order by loaded_at, load_id",
            chunk,
        ).to_pylist()
        for r in rows:
            latest[r["object_key"]] = (r["object_version"] or "", r["status"], r["row_count"] or 0)
    return {
        uri: latest.get(uri)
        for uri, etag in wanted.items()
        if uri not in latest or latest[uri][0] != etag or latest[uri][1] == "removed"
    }


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
    status: str  # 'loaded', 'quarantined', 'skipped', 'changed', 'deferred'
    rows: int = 0
    replaced: int = 0
    quarantined: list[QuarantinedRecord] = field(default_factory=list)
    drift: list[DriftRecord] = field(default_factory=list)
    new_columns: list[pa.Field] = field(default_factory=list)
    load_id: int = 0


@dataclass
class _Load:
    """One object of a group while it is written."""

    info: ObjectInfo
    uri: str
    previous: tuple[str, str, int] | None  # its latest ledger row before this transaction
    outcome: _Outcome
    fetched: _Fetched | None = None  # its download, once the load reaches it
    reader: ObjectReader | None = None
    schema: pa.Schema | None = None
    batches: Iterator[pa.RecordBatch] = field(default_factory=lambda: iter(()))
    new: list[pa.Field] = field(default_factory=list)  # columns the raw table lacks


class _InOrder:
    """Hands each load its download from a prefetcher of the group's objects (loads ask in
    listing order; downloads of objects no load asks for are dropped)."""

    def __init__(self, fetched: Iterator[_Fetched]) -> None:
        self._fetched = fetched

    def __call__(self, info: ObjectInfo) -> _Fetched:
        for fetched in self._fetched:
            if fetched.info.key == info.key:
                return fetched
            fetched.release()
        raise AssertionError(f"{info.key} was not prefetched")


def _release(load: _Load) -> None:
    if load.fetched is not None:
        load.fetched.release()


def _open(
    load: _Load,
    target: dict[str, pa.DataType],
    known_bad: dict[str, str],
    download: Callable[[ObjectInfo], _Fetched],
) -> None:
    """Take the object's download and open its reader; note when it changed since listed
    (``changed``) or cannot be read (``quarantined`` whole)."""
    load.fetched = download(load.info)
    error = known_bad.get(load.uri)
    if error is None and load.fetched.source is None:
        load.outcome.status = "changed"
        return
    if error is None:
        try:
            load.reader = _reader(load.info.key, load.fetched.source, target)
            load.schema, load.batches = load.reader.open()
            load.new = [f for f in load.schema if f.name not in target and f.name != RAW_TEXT]
        except BadObjectError as exc:
            error = str(exc)
    if error is not None:
        load.reader = None
        load.outcome.status = "quarantined"
        load.outcome.quarantined = [QuarantinedRecord(load.uri, error)]


def _write_group(
    warehouse: Warehouse,
    loads: list[_Load],
    *,
    batch_id: str,
    state: _State,
    target: dict[str, pa.DataType],
    known_bad: dict[str, str],
    download: Callable[[ObjectInfo], _Fetched],
    schema_lock: _SchemaLock | None = None,
    defer_ddl: bool = True,
) -> list[_Load]:
    """Write claimed objects inside the caller's transaction: stream the rows of all of
    them through COPY (one COPY while the columns stay the same), delete what earlier
    versions of them loaded, then write their quarantine, drift and ledger rows (one append
    each). Each
    object is downloaded (``download``, in order) and read only when the COPY reaches it;
    one that changed since it was listed is left out (status ``changed``, no ledger row).

    ``target`` (the raw columns' types) is the transaction's own copy: new columns are added
    to it. A schema change happens before any row of the transaction is written when the
    first object brings new columns; a later object that does is, with ``defer_ddl``, left
    for the caller's next transaction (status ``deferred``; ALTER TABLE after this
    transaction's COPY could deadlock with another worker), else the COPY ends and the
    ALTER runs in between (one transaction: backfill). With ``schema_lock``, adding columns
    first takes that lock, held until the caller's transaction ends.

    Raises BadObjectError (with ``uri``) when an object turns out unreadable after rows
    were sent; the caller rolls back and calls again with it in ``known_bad``."""
    pending = deque(loads)
    written: list[_Load] = []
    left_out: list[_Load] = []
    first = True

    def ready(load: _Load) -> bool:
        """Open the object if not yet; False when it changed since listed (left out)."""
        if load.fetched is None:
            _open(load, target, known_bad, download)
        if load.outcome.status == "changed":
            pending.popleft()
            left_out.append(load)
            return False
        return True

    while pending:
        head = pending[0]
        if not ready(head):
            continue
        if head.new:
            if defer_ddl and not first:
                break
            if schema_lock is not None:
                schema_lock.hold()
            warehouse.add_columns(TARGET_TABLE, pa.schema(head.new))
            head.outcome.new_columns = head.new
            target.update({f.name: _value_type(f.type) for f in head.new})
            head.new = []
        first = False
        streamed: list[_Load] = []

        def batches(streamed: list[_Load] = streamed) -> Iterator[pa.RecordBatch]:
            """The pending objects' batches, in order, until one needs new columns."""
            while pending:
                load = pending[0]
                if not ready(load):
                    continue
                if load.new:
                    return  # the caller changes the table first
                pending.popleft()
                streamed.append(load)
                if load.reader is None:  # unreadable: quarantined whole, no rows
                    _release(load)
                    continue
                extracted_at = utcnow()
                load.outcome.load_id = new_load_id()
                try:
                    for batch in load.batches:
                        load.outcome.rows += batch.num_rows
                        yield with_metadata(
                            batch, load_id=load.outcome.load_id, extracted_at=extracted_at
                        )
                except BadObjectError as exc:
                    exc.uri = load.uri  # type: ignore[attr-defined]  # which object
                    raise
                _release(load)

        warehouse.append_arrow(TARGET_TABLE, batches())
        written.extend(streamed)
    for load in pending:
        load.outcome.status = "deferred"
        _release(load)

    # what earlier loads of the written objects left (their load ids are in the ledger; this
    # transaction's are not yet)
    replaced = [load for load in written if load.previous and load.previous[1] == "loaded"]
    for load in replaced:
        load.outcome.replaced = load.previous[2]  # type: ignore[index]
    if replaced:
        _delete_rows(warehouse, [load.uri for load in replaced], state.legacy)
    for load in written:
        if load.outcome.status == "quarantined" and not load.outcome.load_id:
            load.outcome.load_id = new_load_id()
        _finish(load)
    quarantined = [q for load in written for q in load.outcome.quarantined]
    drift = [d for load in written for d in load.outcome.drift]
    if quarantined:
        warehouse.append_arrow(QUARANTINE_TABLE, quarantine_table(batch_id, "s3", quarantined))
    if drift:
        warehouse.append_arrow(DRIFT_TABLE, drift_table(batch_id, drift))
    if written:
        warehouse.append_arrow(
            LEDGER_TABLE,
            ledger_rows(
                [
                    {
                        "load_id": load.outcome.load_id,
                        "batch_id": batch_id,
                        "source": "s3",
                        "target_table": TARGET_TABLE,
                        "object_key": load.uri,
                        "object_version": load.info.etag,
                        "status": load.outcome.status,
                        "row_count": load.outcome.rows,
                        "checksum": load.fetched.sha256,
                    }
                    for load in written
                ]
            ),
        )
    return [*written, *left_out, *pending]


def _finish(load: _Load) -> None:
    """The object's quarantined records and drift notes, once its rows were read."""
    if load.reader is None:
        return
    key = load.info.key
    load.outcome.quarantined = [
        QuarantinedRecord(q.object_key.replace(key, load.uri, 1), q.error, q.record)
        if not q.object_key.startswith("s3://")
        else q
        for q in load.reader.quarantined
    ]
    notes = [
        *(DriftNote(f.name, "added", None, str(f.type)) for f in load.outcome.new_columns),
        *load.reader.drift.values(),
    ]
    load.outcome.drift = [
        DriftRecord(
            load.uri,
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


def _delete_rows(warehouse: Warehouse, uris: list[str], legacy: bool) -> None:
    """Delete the raw rows every earlier load of these objects wrote."""
    for start in range(0, len(uris), 500):
        chunk = uris[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        where = f"_load_id in (select load_id from {LEDGER_TABLE} where object_key in ({marks}))"
        params = list(chunk)
        if legacy:  # rows of an older loader carry their object's URI instead
            where += f" or _source_object in ({marks})"
            params += chunk
        warehouse.execute(f"delete from {TARGET_TABLE} where {where}", params)


def _commit(warehouse: Warehouse, state: _State, load: _Load) -> None:
    """After a commit: remember what the warehouse now holds."""
    if load.outcome.new_columns:
        state.target = _conform_target(warehouse.columns(TARGET_TABLE))
    if load.outcome.status in ("loaded", "quarantined"):
        state.ledger[load.uri] = (load.info.etag, load.outcome.status, load.outcome.rows)


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
    group_bytes: int = GROUP_BYTES,
) -> LoadReport:
    """Load every new or changed export object under ``prefix``.

    Objects are loaded in groups of about ``group_bytes`` (at most ``GROUP_OBJECTS``
    objects), one transaction per group: every object's rows, quarantined records, drift
    report and ledger row commit together, and a crash leaves each group whole or absent.
    One COPY streams the whole group, so the server ingests without pausing between objects.
    Where the warehouse can open more connections (``fork``; PostgreSQL), ``workers`` groups
    load at once, each on its own connection (the server then ingests on more than one
    core)."""
    state = _prepare(warehouse)
    state.ledger = _ledger_state(warehouse, objects.bucket)
    report = LoadReport(batch_id)
    guard = threading.Lock()  # the listing, the report and the state are shared by workers
    schema_lock = _SchemaLock()

    def todo() -> Iterator[ObjectInfo]:
        for info in objects.list(prefix):
            if keys is not None and not keys(info):
                continue
            if _is_current(state.ledger.get(f"s3://{objects.bucket}/{info.key}"), info.etag):
                report.objects_skipped += 1
                continue
            yield info

    listing = todo()

    def next_group() -> list[ObjectInfo]:
        group: list[ObjectInfo] = []
        size = 0
        with guard:
            while size < group_bytes and len(group) < GROUP_OBJECTS:
                info = next(listing, None)
                if info is None:
                    break
                group.append(info)
                size += info.size
        return group

    def work(connection: Warehouse, stop: threading.Event) -> None:
        deferred: list[ObjectInfo] = []
        while not stop.is_set():
            group = deferred or next_group()
            if not group:
                return
            loads = _load_group(
                connection, objects, group, batch_id, state, guard, schema_lock, prefetch
            )
            deferred = [load.info for load in loads if load.outcome.status == "deferred"]
            for load in loads:
                if load.outcome.status == "deferred":
                    continue
                with guard:
                    _record(report, load.outcome)
                if progress:
                    progress(_describe(load.info.key, load.outcome))

    fork = getattr(warehouse, "fork", None)
    connections = [warehouse] + [fork() for _ in range(workers - 1)] if fork else [warehouse]
    stop = threading.Event()
    try:
        if len(connections) == 1:
            work(warehouse, stop)
        else:
            with ThreadPoolExecutor(len(connections), thread_name_prefix="retailml-load") as pool:
                futures = [pool.submit(work, c, stop) for c in connections]
                try:
                    for future in futures:
                        future.result()
                finally:
                    stop.set()
    finally:
        for connection in connections[1:]:
            connection.close()
    return report


def _load_group(
    warehouse: Warehouse,
    objects: ObjectStore,
    group: list[ObjectInfo],
    batch_id: str,
    state: _State,
    guard: threading.Lock,
    schema_lock: _SchemaLock,
    prefetch: int,
) -> list[_Load]:
    """One group of objects in one transaction (redone with an object quarantined whole
    when it turns out unreadable midway)."""
    bucket = objects.bucket
    known_bad: dict[str, str] = {}
    while True:
        with guard:
            target = dict(state.target)
        prefetcher = _Prefetcher(objects, group, prefetch, release=False)  # downloads ahead
        loads: list[_Load] = []
        try:
            with warehouse.transaction():
                claimed = _claim(warehouse, {f"s3://{bucket}/{i.key}": i.etag for i in group})
                for info in group:
                    uri = f"s3://{bucket}/{info.key}"
                    if uri in claimed:
                        loads.append(_Load(info, uri, claimed[uri], _Outcome("loaded")))
                    else:
                        loads.append(_Load(info, uri, None, _Outcome("skipped")))
                written = _write_group(
                    warehouse,
                    [load for load in loads if load.outcome.status == "loaded"],
                    batch_id=batch_id,
                    state=state,
                    target=target,
                    known_bad=known_bad,
                    download=_InOrder(iter(prefetcher)),
                    schema_lock=schema_lock,
                )
        except BadObjectError as exc:
            uri = getattr(exc, "uri", "")
            if not uri or uri in known_bad:
                raise
            known_bad[uri] = str(exc)
            continue
        finally:
            schema_lock.release()
            for load in loads:
                _release(load)
            prefetcher.close()
        with guard:
            for load in written:
                _commit(warehouse, state, load)
        return loads


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
    state = _prepare(warehouse)
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
        infos = list(_partition_listing(objects, prefix, start, end))
        seen = {base + info.key for info in infos}
        prefetcher = _Prefetcher(objects, infos, prefetch, release=False)
        target = dict(state.target)  # this transaction's view of the raw columns
        loads: list[_Load] = []
        try:
            with warehouse.transaction():
                _lock(warehouse, f"backfill:{base}{prefix}")
                _lock(warehouse, *seen)
                for info in infos:
                    uri = base + info.key
                    entry = state.ledger.get(uri)
                    # whatever version loaded it before, its rows are replaced
                    previous = entry if entry is not None and entry[1] == "loaded" else None
                    loads.append(_Load(info, uri, previous, _Outcome("loaded")))
                written = _write_group(
                    warehouse,
                    loads,
                    batch_id=batch_id,
                    state=state,
                    target=target,
                    known_bad=known_bad,
                    download=_InOrder(iter(prefetcher)),
                    defer_ddl=False,
                )
                changed = [load.uri for load in written if load.outcome.status == "changed"]
                if changed:
                    raise ObjectChangedError(f"{changed[0]} changed during the backfill: rerun it")
                for load in written:
                    _record(report, load.outcome)
                    if progress:
                        progress("backfill: " + _describe(load.info.key, load.outcome))
                for uri in sorted(previously - seen):
                    report.rows_replaced += state.ledger[uri][2]
                    report.objects_removed += 1
                    _remove(warehouse, uri, batch_id, state.legacy)
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
            for load in loads:
                _release(load)
            prefetcher.close()
        for load in written:
            _commit(warehouse, state, load)
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


def _remove(warehouse: Warehouse, uri: str, batch_id: str, legacy: bool) -> None:
    _delete_rows(warehouse, [uri], legacy)
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
