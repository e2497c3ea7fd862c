"""Conform extracted record batches to the raw table's column types (pure Arrow, no I/O).

Schema drift never stops a load:

* a column the raw table does not have yet is kept (the loader adds it to the table);
* a contract column missing from an export becomes null;
* a value that does not fit its column's type (a changed type, or one bad value) is kept as
  text in the row's ``_raw_text`` JSON object (``{"quantity": "three"}``), the typed column is
  null for that row, and the change is reported (:class:`DriftNote`), not quarantined.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RAW_TEXT = "_raw_text"
JSON_TYPE = pa.json_(pa.string())

# warehouse column type names (DuckDB, PostgreSQL, BigQuery) -> Arrow types for conforming
_WAREHOUSE_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(),
    "integer": pa.int64(),
    "int64": pa.int64(),
    "smallint": pa.int64(),
    "double": pa.float64(),
    "double precision": pa.float64(),
    "float64": pa.float64(),
    "real": pa.float64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "bool": pa.bool_(),
    "varchar": pa.string(),
    "text": pa.string(),
    "character varying": pa.string(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us"),
    "timestamp without time zone": pa.timestamp("us"),
    "datetime": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def arrow_type_of(warehouse_type: str) -> pa.DataType:
    """The Arrow type extracted values are conformed to for a raw column of this type."""
    name = warehouse_type.lower()
    if name in _WAREHOUSE_TYPES:
        return _WAREHOUSE_TYPES[name]
    if name.startswith(("varchar", "character varying", "text", "json")):
        return pa.string()
    return pa.string()  # unknown: keep the text


@dataclass(frozen=True)
class DriftNote:
    """A difference between an export and the raw table, reported with the load."""

    column: str
    change: str  # 'added' (new column), 'missing' (column absent), 'type' (values kept as text)
    expected_type: str | None
    found_type: str | None
    rows_as_text: int = 0

    def describe(self) -> str:
        if self.change == "added":
            return f"new column {self.column!r} ({self.found_type})"
        if self.change == "missing":
            return f"column {self.column!r} missing (null)"
        return (
            f"column {self.column!r} is {self.found_type}, expected {self.expected_type}: "
            f"{self.rows_as_text} value(s) kept as text in {RAW_TEXT}"
        )


def _family(type_: pa.DataType) -> str:
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    for name, test in (
        ("integer", pa.types.is_integer),
        ("float", pa.types.is_floating),
        ("boolean", pa.types.is_boolean),
        ("timestamp", pa.types.is_timestamp),
        ("date", pa.types.is_date),
        ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        ("null", pa.types.is_null),
    ):
        if test(type_):
            return name
    return str(type_)


_PATTERNS = {
    "integer": re.compile(r"^\s*[+-]?\d{1,18}\s*$"),
    "float": re.compile(
        r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|nan)\s*$", re.I
    ),
    "boolean": re.compile(r"^\s*(true|false|1|0)\s*$", re.I),
    "timestamp": re.compile(r"^\s*\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?\s*$"),
    "date": re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$"),
}


def as_text(array: pa.Array) -> pa.Array:
    """Any array as strings (nested values as JSON)."""
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    if pa.types.is_dictionary(array.type):
        array = array.dictionary.take(array.indices)
    if pa.types.is_string(array.type):
        return array
    try:
        return array.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in array.to_pylist()],
            pa.string(),
        )


def try_cast(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray | None]:
    """Cast ``array`` to ``target``; values that cannot be cast become null.

    Returns the cast array and a boolean mask of the rows whose non-null value failed
    (None when none did)."""
    if pa.types.is_dictionary(array.type) and array.type.value_type == target:
        return array, None
    try:
        return array.cast(target), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    text = as_text(array)
    if pa.types.is_string(target):
        return text, None
    pattern = _PATTERNS.get(_family(target))
    candidate = text
    if pattern is not None:
        matches = pc.match_substring_regex(text, pattern.pattern, ignore_case=True)
        candidate = pc.if_else(matches, pc.utf8_trim_whitespace(text), pa.scalar(None, pa.string()))
    try:
        result = candidate.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        result = pa.array([_cast_one(v, target) for v in candidate.to_pylist()], target)
    failed = pc.and_(text.is_valid(), result.is_null())
    mask = failed.to_numpy(zero_copy_only=False)
    return result, (mask if mask.any() else None)


def _cast_one(value: str | None, target: pa.DataType) -> object:
    if value is None:
        return None
    try:
        return pa.array([value], pa.string()).cast(target)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    """Same family, so a cast changes representation only (int32 -> int64, ns -> us)."""
    return _family(found) == _family(expected) or _family(found) == "null"


@dataclass
class Conformed:
    batch: pa.RecordBatch
    notes: list[DriftNote]


def conform_batch(
    batch: pa.RecordBatch | pa.Table,
    target: dict[str, pa.DataType],
    *,
    contract: tuple[str, ...],
    typed_source: bool = True,
    report_missing: bool = True,
) -> Conformed:
    """Conform one batch to ``target`` (name -> Arrow type of the raw table's columns).

    ``contract`` columns come first, in order; missing ones become null. Columns not in
    ``target`` are kept as they are (the caller adds them to the table). Columns whose name
    starts with ``_`` are the loader's and are dropped from the input. ``typed_source``
    (Parquet) reports a column whose type changed family even when every value casts;
    text sources (CSV, JSON re-read as text) report only values that did not fit."""
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else _empty(batch)
    n = batch.num_rows
    names = [name for name in batch.schema.names if not name.startswith("_")]
    notes: list[DriftNote] = []
    failures: dict[str, tuple[np.ndarray, pa.Array]] = {}
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []

    def add(name: str, array: pa.Array) -> None:
        arrays.append(array)
        fields.append(pa.field(name, array.type))

    order = [*contract, *[n_ for n_ in names if n_ not in contract]]
    for name in order:
        expected = target.get(name)
        if name not in names:
            if expected is None:
                continue
            add(name, pa.nulls(n, expected))
            if report_missing:
                notes.append(DriftNote(name, "missing", str(expected), None))
            continue
        array = batch.column(name)
        if expected is None:  # a new column: keep as found (nested values as JSON text)
            if not _storable(array.type):
                array = as_text(array)
            add(name, array)
            continue
        found = array.type
        cast, failed = try_cast(array, expected)
        add(name, cast)
        if failed is not None:
            failures[name] = (failed, array)
            notes.append(DriftNote(name, "type", str(expected), str(found), int(failed.sum())))
        elif typed_source and not _compatible(found, expected):
            notes.append(DriftNote(name, "type", str(expected), str(found), 0))
    add(RAW_TEXT, _raw_text(failures, n))
    return Conformed(pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)), notes)


def _empty(table: pa.Table) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([], f.type) for f in table.schema], schema=table.schema
    )


def _storable(type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return _family(type_) in {"integer", "float", "boolean", "timestamp", "date", "string"}


def _raw_text(failures: dict[str, tuple[np.ndarray, pa.Array]], n: int) -> pa.Array:
    """``{"column": "original text", ...}`` for rows with values that did not fit, else null."""
    if not failures:
        return pa.ExtensionArray.from_storage(JSON_TYPE, pa.nulls(n, pa.string()))
    any_failed = np.zeros(n, dtype=bool)
    for mask, _ in failures.values():
        any_failed |= mask
    rows = np.flatnonzero(any_failed)
    texts = {name: as_text(array.take(pa.array(rows))) for name, (_, array) in failures.items()}
    values: list[str | None] = [None] * n
    for position, row in enumerate(rows):
        record = {
            name: texts[name][position].as_py() for name, (mask, _) in failures.items() if mask[row]
        }
        values[row] = json.dumps(record, sort_keys=True)
    return pa.ExtensionArray.from_storage(JSON_TYPE, pa.array(values, pa.string()))
