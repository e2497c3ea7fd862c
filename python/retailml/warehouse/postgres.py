"""PostgreSQL warehouse over psycopg 3: bulk COPY from Arrow in, COPY to Arrow out.

Appends stream Arrow record batches into ``COPY ... FROM STDIN``: in PostgreSQL's binary
format when every column has an exact binary encoding (:mod:`.pg_binary`), else as CSV. A
producer thread pulls the batches (which may be decoded lazily from a file being downloaded)
and encodes them while the calling thread feeds the COPY, so reading, encoding and the
server's ingest overlap; a bounded queue keeps memory flat.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from . import pg_read
from .base import Params, WarehouseError, qualified, quote_ident, split_name, sql_type
from .pg_binary import COPY_SIGNATURE, COPY_TRAILER, binary_plan, encode_batch

# Appends smaller than this are encoded inline; larger ones (or lazy streams) in a thread.
_INLINE_ROWS = 20_000
_INSERT_ROWS = 20  # a few rows (ledger, quarantine): one INSERT, one round trip
_QUEUE_CHUNKS = 6  # encoded chunks waiting for the connection (a few MB each)
_MAX_CHUNK_BYTES = 1 << 30  # binary offsets are 32-bit: split bigger batches
_CHUNK_ROWS = 8_192  # rows encoded per COPY data chunk

_POSTGRES_TYPES = {
    "json": "jsonb",
    "decimal": "numeric({precision},{scale})",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "boolean": "boolean",
    "integer": "bigint",
    "float": "double precision",
    "date": "date",
    "string": "text",
    "binary": "bytea",
}


def postgres_type(arrow_type: pa.DataType) -> str:
    return sql_type(arrow_type, _POSTGRES_TYPES, "PostgreSQL")


def _to_pg_placeholders(sql: str) -> str:
    return pg_read.to_pyformat(sql)


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Make a batch CSV-writable for COPY: JSON extension -> text, dictionaries decoded,
    ns timestamps -> us."""
    arrays, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if isinstance(field.type, pa.BaseExtensionType):
            column = column.storage
            field = pa.field(field.name, column.type)
        if pa.types.is_dictionary(field.type):
            column = column.dictionary.take(column.indices)
            field = pa.field(field.name, column.type)
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            target = pa.timestamp("us", tz=field.type.tz)
            column = column.cast(target, safe=False)
            field = pa.field(field.name, target)
        arrays.append(column)
        fields.append(field)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


class PostgresWarehouse:
    kind = "postgres"

    def __init__(self, conninfo: str) -> None:
        try:
            self._con = psycopg.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise WarehouseError(f"cannot connect to PostgreSQL ({conninfo!r}): {exc}") from exc
        self._con.execute("SET TIME ZONE 'UTC'")
        self._conninfo = conninfo
        self._lock = threading.RLock()
        self._in_tx = False
        # column types for COPY, per table, remembered inside one transaction only (where no
        # one else can change them under us; our own DDL forgets them)
        self._copy_types: dict[str, dict[str, str]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> PostgresWarehouse:
        return cls(conninfo(settings))

    def fork(self) -> PostgresWarehouse:
        """Another connection to the same database (for loading objects in parallel)."""
        return PostgresWarehouse(self._conninfo)

    # -- queries --------------------------------------------------------------------
    def execute(self, sql: str, params: Params = None) -> None:
        if sql.lstrip()[:6].lower() in ("alter ", "create", "drop t", "drop s"):
            self._copy_types.clear()
        with self._lock:
            self._con.execute(_to_pg_placeholders(sql) if params else sql, params)

    def query_arrow(self, sql: str, params: Params = None) -> pa.Table:
        """The whole result as one table (binary COPY decoded to Arrow: :mod:`.pg_read`)."""
        with self._lock:
            columns = pg_read.describe(self._con, pg_read.strip_sql(sql), params)
            batches = list(pg_read.read_batches(self._con, sql, params, columns=columns))
        return pa.Table.from_batches(batches, schema=pg_read.arrow_schema(columns))

    def iter_arrow(
        self, sql: str, params: Params = None, batch_rows: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """The result in record batches of at most ``batch_rows`` rows, a few in memory at a
        time; the connection is busy until the iteration ends (or is closed)."""
        with self._lock:
            yield from pg_read.read_batches(self._con, sql, params, chunk_rows=batch_rows)

    def scalar(self, sql: str, params: Params = None) -> Any:
        with self._lock:
            row = self._con.execute(_to_pg_placeholders(sql) if params else sql, params).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = not self._in_tx
            self._in_tx = True
            try:
                with self._con.transaction():
                    yield
            finally:
                if outer:
                    self._in_tx = False
                    self._copy_types.clear()

    def advisory_lock(self, *keys: str) -> None:
        """Hold a lock on each key until the current transaction ends (concurrent loaders),
        taken in the order given, in one round trip."""
        if len(keys) == 1:
            self.execute("select pg_advisory_xact_lock(hashtextextended(?, 0))", [keys[0]])
        elif keys:
            self.execute(
                "select count(pg_advisory_xact_lock(hashtextextended(k, 0))) "
                "from unnest(?::text[]) with ordinality as t(k, n)",
                [list(keys)],
            )

    # -- tables ---------------------------------------------------------------------
    def table_exists(self, table: str) -> bool:
        schema, name = split_name(table)
        return bool(
            self.scalar(
                "select count(*) from information_schema.tables "
                "where table_schema = ? and table_name = ?",
                [schema, name],
            )
        )

    def columns(self, table: str) -> dict[str, str]:
        schema, name = split_name(table)
        with self._lock:
            rows = self._con.execute(
                "select column_name, lower(data_type) from information_schema.columns "
                "where table_schema = %s and table_name = %s order by ordinal_position",
                [schema, name],
            ).fetchall()
        return dict(rows)

    def create_table(self, table: str, schema: pa.Schema) -> None:
        schema_name, _ = split_name(table)
        cols = ", ".join(f"{quote_ident(f.name)} {postgres_type(f.type)}" for f in schema)
        self._copy_types.pop(table, None)
        with self._lock:
            self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema_name)}")
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {qualified(table)} ({cols})")

    def add_columns(self, table: str, schema: pa.Schema) -> None:
        self._copy_types.pop(table, None)
        for field in schema:
            self.execute(
                f"ALTER TABLE {qualified(table)} ADD COLUMN IF NOT EXISTS "
                f"{quote_ident(field.name)} {postgres_type(field.type)}"
            )

    def append_arrow(self, table: str, data: pa.Table | Iterable[pa.RecordBatch]) -> int:
        """COPY the batches into ``table``; an exception raised while producing them aborts
        the COPY (and reaches the caller, whose transaction then rolls back)."""
        types = self._copy_types.get(table)
        if types is None:
            types = self.columns(table)
            if not types:
                raise WarehouseError(f"cannot append to {table}: no such table")
            if self._in_tx:
                self._copy_types[table] = types
        if isinstance(data, pa.Table) and 0 < data.num_rows <= _INSERT_ROWS:
            return self._insert(table, types, data)  # bookkeeping rows: one round trip
        if isinstance(data, pa.Table) and data.num_rows <= _INLINE_ROWS:
            messages: Iterator[object] = _copy_messages(table, types, data.to_batches())
            with self._lock, self._con.cursor() as cur:
                return _run_copies(cur, messages)
        batches = data.to_batches() if isinstance(data, pa.Table) else data
        producer = _Producer(lambda: _copy_messages(table, types, batches))
        with self._lock, self._con.cursor() as cur:
            try:
                return _run_copies(cur, producer.messages())
            except psycopg.Error:
                self._copy_types.pop(table, None)  # maybe changed by someone else
                raise
            finally:
                producer.close()

    def _insert(self, table: str, types: dict[str, str], data: pa.Table) -> int:
        missing = [name for name in data.column_names if name not in types]
        if missing:
            raise WarehouseError(f"{table} has no column(s) {missing}")
        data = pa.Table.from_batches([_csv_ready(b) for b in data.to_batches()])
        cols = ", ".join(quote_ident(n) for n in data.column_names)
        row = "(" + ", ".join(["%s"] * data.num_columns) + ")"
        values = ", ".join([row] * data.num_rows)
        params = [value for record in data.to_pylist() for value in record.values()]
        with self._lock:
            self._con.execute(f"INSERT INTO {qualified(table)} ({cols}) VALUES {values}", params)
        return data.num_rows

    def replace_arrow(self, table: str, data: pa.Table) -> int:
        staging = f"{table}__replacing"
        with self.transaction():
            self.execute(f"DROP TABLE IF EXISTS {qualified(staging)}")
            self.create_table(staging, data.schema)
            self.append_arrow(staging, data)
            self.execute(f"DROP TABLE IF EXISTS {qualified(table)}")
            _, name = split_name(table)
            self.execute(f"ALTER TABLE {qualified(staging)} RENAME TO {quote_ident(name)}")
        return data.num_rows

    def close(self) -> None:
        self._con.close()


@dataclass(frozen=True)
class _Start:
    sql: str


@dataclass(frozen=True)
class _End:
    rows: int


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _copy_messages(
    table: str, types: dict[str, str], batches: Iterable[pa.RecordBatch]
) -> Iterator[object]:
    """The COPY statements and their data for ``batches``: one COPY per run of batches with
    the same schema, binary where possible, CSV otherwise."""
    schema: pa.Schema | None = None
    encode: Callable[[pa.RecordBatch], Iterator[bytes | memoryview]] | None = None
    rows = 0
    trailer = b""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if schema is None or not batch.schema.equals(schema):
            if schema is not None:
                if trailer:
                    yield trailer
                yield _End(rows)
                rows = 0
            schema = batch.schema
            missing = [name for name in schema.names if name not in types]
            if missing:
                raise WarehouseError(f"{table} has no column(s) {missing}")
            plan = binary_plan(batch, types)
            if plan is not None:
                cols = ", ".join(quote_ident(c.name) for c in plan)
                yield _Start(f"COPY {qualified(table)} ({cols}) FROM STDIN (FORMAT binary)")
                yield COPY_SIGNATURE
                trailer = COPY_TRAILER
                encode = _binary_encoder(plan)
            else:
                cols = ", ".join(quote_ident(n) for n in schema.names)
                yield _Start(f"COPY {qualified(table)} ({cols}) FROM STDIN (FORMAT csv)")
                trailer = b""
                encode = _csv_encoder
        assert encode is not None
        yield from encode(batch)
        rows += batch.num_rows
    if schema is not None:
        if trailer:
            yield trailer
        yield _End(rows)


def _binary_encoder(plan: list[Any]) -> Callable[[pa.RecordBatch], Iterator[memoryview]]:
    def encode(batch: pa.RecordBatch) -> Iterator[memoryview]:
        # slices: the server starts on the first while the next are encoded
        by_bytes = batch.num_rows * _MAX_CHUNK_BYTES // max(1, batch.nbytes) // 2
        step = max(1, min(_CHUNK_ROWS, by_bytes))
        for start in range(0, batch.num_rows, step):
            yield encode_batch(batch.slice(start, step), plan)

    return encode


def _csv_encoder(batch: pa.RecordBatch) -> Iterator[memoryview]:
    sink = io.BytesIO()
    pacsv.write_csv(
        _csv_ready(batch),
        sink,
        pacsv.WriteOptions(include_header=False, quoting_style="needed"),
    )
    yield sink.getbuffer()


def _run_copies(cur: psycopg.Cursor[Any], messages: Iterator[object]) -> int:
    """Feed the COPY statements and data of ``messages`` through ``cur``."""
    total = 0
    for start in messages:
        if isinstance(start, _Failure):
            raise start.error
        if not isinstance(start, _Start):
            raise WarehouseError(f"COPY stream out of order: {type(start).__name__}")
        with cur.copy(start.sql) as copy:
            for message in messages:
                if isinstance(message, _End):
                    total += message.rows
                    break
                if isinstance(message, _Failure):
                    raise message.error
                copy.write(message)  # type: ignore[arg-type]
    return total


class _Producer:
    """Runs a message generator in a thread; :meth:`messages` yields them in order.

    The queue is bounded (flat memory). An exception in the generator is delivered in order
    as a :class:`_Failure`; closing early (the consumer failed) stops the thread."""

    _DONE = object()

    def __init__(self, make: Callable[[], Iterator[object]]) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(make,), name="retailml-copy-producer", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[], Iterator[object]]) -> None:
        try:
            for message in make():
                if not self._put(message):
                    return
        except BaseException as exc:  # delivered to the consumer, which re-raises it
            self._put(_Failure(exc))
            return
        self._put(self._DONE)

    def messages(self) -> Iterator[object]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            yield item
            if isinstance(item, _Failure):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def conninfo(settings: Any, database: str | None = None) -> str:
    parts = {
        "host": settings.pg_host,
        "port": settings.pg_port,
        "user": settings.pg_user,
        "dbname": database or settings.pg_database,
    }
    password = settings.pg_password.get_secret_value()
    if password:
        parts["password"] = password
    return " ".join(f"{k}={v}" for k, v in parts.items())


def ensure_database(settings: Any) -> None:
    """Create the configured database if the server does not have it yet."""
    try:
        with psycopg.connect(conninfo(settings, "postgres"), autocommit=True) as con:
            exists = con.execute(
                "select 1 from pg_database where datname = %s", [settings.pg_database]
            ).fetchone()
            if not exists:
                con.execute(f"CREATE DATABASE {quote_ident(settings.pg_database)}")
    except psycopg.OperationalError as exc:
        raise WarehouseError(
            f"cannot reach PostgreSQL at {settings.pg_host}:{settings.pg_port}: {exc}"
        ) from exc
