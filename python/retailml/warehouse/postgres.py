"""PostgreSQL warehouse over psycopg 3: bulk COPY from Arrow in, COPY to Arrow out."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from .base import Params, WarehouseError, qualified, quote_ident, split_name, sql_type

# PostgreSQL type OIDs -> Arrow types for reading result sets.
_OID_TO_ARROW: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int64(),
    23: pa.int64(),
    700: pa.float64(),
    701: pa.float64(),
    1700: pa.float64(),
    25: pa.string(),
    1043: pa.string(),
    1042: pa.string(),
    19: pa.string(),
    114: pa.string(),
    3802: pa.string(),
    2950: pa.string(),
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
    17: pa.binary(),
}


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
    return sql.replace("%", "%%").replace("?", "%s")


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Make a batch CSV-writable for COPY: JSON extension -> text, ns timestamps -> us."""
    arrays, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if isinstance(field.type, pa.BaseExtensionType):
            column = column.storage
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
        self._lock = threading.RLock()
        self._in_tx = False

    @classmethod
    def from_settings(cls, settings: Any) -> PostgresWarehouse:
        return cls(conninfo(settings))

    # -- queries --------------------------------------------------------------------
    def execute(self, sql: str, params: Params = None) -> None:
        with self._lock:
            self._con.execute(_to_pg_placeholders(sql) if params else sql, params)

    def _arrow_schema(self, sql: str, params: Params) -> pa.Schema:
        with self._lock, self._con.cursor() as cur:
            cur.execute(
                _to_pg_placeholders(f"select * from ({sql}) as q limit 0")
                if params
                else f"select * from ({sql}) as q limit 0",
                params,
            )
            return pa.schema(
                pa.field(col.name, _OID_TO_ARROW.get(col.type_code, pa.string()))
                for col in cur.description or []
            )

    def _copy_out(self, sql: str, params: Params) -> Iterator[bytes]:
        with self._lock, self._con.cursor() as cur:
            statement = f"COPY ({sql}) TO STDOUT (FORMAT csv)"
            if params:  # COPY takes no server-side parameters: psycopg binds them client-side
                statement = _to_pg_placeholders(statement)
            with cur.copy(statement, params) as copy:
                yield from (bytes(chunk) for chunk in copy)

    def query_arrow(self, sql: str, params: Params = None) -> pa.Table:
        schema = self._arrow_schema(sql, params)
        data = b"".join(self._copy_out(sql, params))
        return _read_csv(data, schema)

    def iter_arrow(
        self, sql: str, params: Params = None, batch_rows: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        schema = self._arrow_schema(sql, params)
        buffer = bytearray()
        chunk_bytes = max(1 << 20, batch_rows * 64)
        for chunk in self._copy_out(sql, params):
            buffer += chunk
            if len(buffer) >= chunk_bytes:
                cut = buffer.rfind(b"\n") + 1
                yield from _read_csv(bytes(buffer[:cut]), schema).to_batches(batch_rows)
                del buffer[:cut]
        if buffer:
            yield from _read_csv(bytes(buffer), schema).to_batches(batch_rows)

    def scalar(self, sql: str, params: Params = None) -> Any:
        with self._lock:
            row = self._con.execute(_to_pg_placeholders(sql) if params else sql, params).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock, self._con.transaction():
            yield

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
        with self._lock:
            self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema_name)}")
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {qualified(table)} ({cols})")

    def add_columns(self, table: str, schema: pa.Schema) -> None:
        for field in schema:
            self.execute(
                f"ALTER TABLE {qualified(table)} ADD COLUMN IF NOT EXISTS "
                f"{quote_ident(field.name)} {postgres_type(field.type)}"
            )

    def append_arrow(self, table: str, data: pa.Table | Iterable[pa.RecordBatch]) -> int:
        batches = data.to_batches() if isinstance(data, pa.Table) else data
        rows = 0
        with self._lock, self._con.cursor() as cur:
            copy_sql = None
            write_options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                batch = _csv_ready(batch)
                if copy_sql is None:
                    cols = ", ".join(quote_ident(n) for n in batch.schema.names)
                    copy_sql = f"COPY {qualified(table)} ({cols}) FROM STDIN (FORMAT csv)"
                sink = io.BytesIO()
                pacsv.write_csv(batch, sink, write_options)
                with cur.copy(copy_sql) as copy:
                    copy.write(sink.getbuffer())
                rows += batch.num_rows
        return rows

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


def _read_csv(data: bytes, schema: pa.Schema) -> pa.Table:
    if not data:
        return schema.empty_table()
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=schema.names),
        convert_options=pacsv.ConvertOptions(
            column_types=schema,
            true_values=["t"],
            false_values=["f"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


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
