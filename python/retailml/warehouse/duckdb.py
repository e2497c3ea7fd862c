"""DuckDB warehouse: the embedded default. Arrow in and out natively, no copies."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from .base import Params, WarehouseError, qualified, quote_ident, split_name, sql_type

_DUCKDB_TYPES = {
    "json": "JSON",
    "decimal": "DECIMAL({precision},{scale})",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "boolean": "BOOLEAN",
    "integer": "BIGINT",
    "float": "DOUBLE",
    "date": "DATE",
    "string": "VARCHAR",
    "binary": "BLOB",
}


def duckdb_type(arrow_type: pa.DataType) -> str:
    return sql_type(arrow_type, _DUCKDB_TYPES, "DuckDB")


class DuckDBWarehouse:
    kind = "duckdb"

    def __init__(
        self, path: Path | str, *, read_only: bool = False, memory_limit: str | None = None
    ) -> None:
        """``memory_limit`` (e.g. ``"256MB"``): DuckDB's buffer pool, which lives in this
        process (default: DuckDB's, 80 % of RAM)."""
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            raise WarehouseError(
                f"cannot open DuckDB warehouse {path}: {exc}. Another process (a running "
                "pipeline?) may hold it; DuckDB allows one writer process at a time."
            ) from exc
        self._lock = threading.RLock()
        self._con.execute("SET TimeZone = 'UTC'")
        if memory_limit:
            self._con.execute("SET memory_limit = ?", [memory_limit])

    # -- queries --------------------------------------------------------------------
    def execute(self, sql: str, params: Params = None) -> None:
        with self._lock:
            self._con.execute(sql, params or [])

    def query_arrow(self, sql: str, params: Params = None) -> pa.Table:
        with self._lock:
            return self._con.sql(sql, params=params or None).to_arrow_table()

    def iter_arrow(
        self, sql: str, params: Params = None, batch_rows: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        with self._lock:
            cursor = self._con.cursor()
        try:
            yield from cursor.sql(sql, params=params or None).to_arrow_reader(batch_rows)
        finally:
            cursor.close()

    def scalar(self, sql: str, params: Params = None) -> Any:
        with self._lock:
            rows = self._con.execute(sql, params or []).fetchall()  # drain: no pending result
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            else:
                self._con.execute("COMMIT")

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
        rows = self.query_arrow(
            "select column_name, lower(data_type) as data_type from information_schema.columns "
            "where table_schema = ? and table_name = ? order by ordinal_position",
            [schema, name],
        ).to_pylist()
        return {r["column_name"]: r["data_type"] for r in rows}

    def create_table(self, table: str, schema: pa.Schema) -> None:
        schema_name, _ = split_name(table)
        cols = ", ".join(f"{quote_ident(f.name)} {duckdb_type(f.type)}" for f in schema)
        with self._lock:
            self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema_name)}")
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {qualified(table)} ({cols})")

    def add_columns(self, table: str, schema: pa.Schema) -> None:
        for field in schema:
            self.execute(
                f"ALTER TABLE {qualified(table)} ADD COLUMN IF NOT EXISTS "
                f"{quote_ident(field.name)} {duckdb_type(field.type)}"
            )

    def append_arrow(self, table: str, data: pa.Table | Iterable[pa.RecordBatch]) -> int:
        rows = 0
        batches = data.to_batches() if isinstance(data, pa.Table) else data
        with self._lock:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                self._con.register("__retailml_append", batch)
                try:
                    self._con.execute(
                        f"INSERT INTO {qualified(table)} BY NAME SELECT * FROM __retailml_append"
                    )
                finally:
                    self._con.unregister("__retailml_append")
                rows += batch.num_rows
        return rows

    def replace_arrow(self, table: str, data: pa.Table) -> int:
        schema_name, _ = split_name(table)
        with self._lock:
            self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema_name)}")
            self._con.register("__retailml_replace", data)
            try:
                self._con.execute(
                    f"CREATE OR REPLACE TABLE {qualified(table)} AS "
                    "SELECT * FROM __retailml_replace"
                )
            finally:
                self._con.unregister("__retailml_replace")
        return data.num_rows

    def close(self) -> None:
        with self._lock:
            self._con.close()
