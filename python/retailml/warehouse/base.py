"""The warehouse interface every layer talks to.

Implementations: :mod:`.duckdb` (embedded default), :mod:`.postgres` (production),
:mod:`.bigquery` (scale-out). SQL passed in uses ``?`` placeholders and plain ANSI SQL that
all of them accept; table names are ``schema.table``.

Optional capabilities, looked up with ``getattr`` by the loaders: ``advisory_lock(*keys)``
(hold a lock on each key until the transaction ends, so concurrent runs serialise on one
object; PostgreSQL) and ``fork()`` (another connection to the same warehouse, to load
several objects at once; PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pyarrow as pa

Params = tuple[Any, ...] | list[Any] | None


class WarehouseError(RuntimeError):
    """A warehouse operation failed; the message names the table or statement."""


class Warehouse(Protocol):
    kind: str

    def execute(self, sql: str, params: Params = None) -> None: ...

    def query_arrow(self, sql: str, params: Params = None) -> pa.Table: ...

    def iter_arrow(
        self, sql: str, params: Params = None, batch_rows: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream a query's result in record batches (flat memory)."""
        ...

    def scalar(self, sql: str, params: Params = None) -> Any: ...

    def transaction(self) -> AbstractContextManager[None]:
        """Everything executed inside commits together or not at all."""
        ...

    def table_exists(self, table: str) -> bool: ...

    def columns(self, table: str) -> dict[str, str]:
        """Column name -> warehouse type name (lower case), in table order."""
        ...

    def create_table(self, table: str, schema: pa.Schema) -> None:
        """Create ``table`` (and its schema) from an Arrow schema if it does not exist."""
        ...

    def add_columns(self, table: str, schema: pa.Schema) -> None:
        """Add the given columns to an existing table."""
        ...

    def append_arrow(self, table: str, data: pa.Table | Iterable[pa.RecordBatch]) -> int:
        """Bulk-append Arrow data (matched by column name); return rows written."""
        ...

    def replace_arrow(self, table: str, data: pa.Table) -> int:
        """Replace the whole table with ``data`` atomically."""
        ...

    def close(self) -> None: ...


def sql_type(arrow_type: pa.DataType, names: dict[str, str], dialect: str) -> str:
    """The warehouse column type for an Arrow type, from a dialect's table of type names."""
    if getattr(arrow_type, "extension_name", None) == "arrow.json":
        return names["json"]
    if pa.types.is_decimal(arrow_type):
        return names["decimal"].format(precision=arrow_type.precision, scale=arrow_type.scale)
    if pa.types.is_timestamp(arrow_type):
        return names["timestamptz" if arrow_type.tz else "timestamp"]
    for kind, test in (
        ("boolean", pa.types.is_boolean),
        ("integer", pa.types.is_integer),
        ("float", pa.types.is_floating),
        ("date", pa.types.is_date),
        ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    ):
        if test(arrow_type):
            return names[kind]
    raise WarehouseError(f"no {dialect} type for Arrow type {arrow_type}")


def split_name(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    if not schema or not name:
        raise WarehouseError(f"table name {table!r} must be 'schema.table'")
    return schema, name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str) -> str:
    schema, name = split_name(table)
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def ensure_table(warehouse: Warehouse, table: str, schema: pa.Schema) -> None:
    """Create ``table``, or add the columns of ``schema`` that an older version lacks."""
    warehouse.create_table(table, schema)
    existing = warehouse.columns(table)
    missing = [f for f in schema if f.name not in existing]
    if missing:
        warehouse.add_columns(table, pa.schema(missing))
