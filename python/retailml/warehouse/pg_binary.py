"""Arrow record batches -> PostgreSQL's binary ``COPY`` format, column-wise (no per-row Python).

A binary COPY stream is a signature, then one tuple per row (a 16-bit field count, then per
field a 32-bit length, -1 for NULL, and the value in network byte order), then a trailer.
The server parses it far more cheaply than CSV (no text to number/timestamp conversion), which
is what lets a client-side encoder keep a COPY busy.

How a batch is encoded without a Python loop over rows:

* The COPY column list is ours to choose, so fixed-width columns come first. Consecutive
  fixed-width fields without nulls (numbers, timestamps, booleans, dates, strings that happen
  to have one length in the batch, and constant columns such as per-object metadata) are
  written as one numpy structured array: each row's bytes are one record of it.
* Every other field (a string of varying length, a column with nulls) is an Arrow binary array
  holding each row's encoded field (length prefix included).
* The row-major interleaving of those pieces is one Arrow ``take`` over their concatenation;
  the result's data buffer is the COPY payload, handed to the connection without a copy.

Only types with an exact binary form are encoded here (:func:`binary_plan` returns None
otherwise and the caller falls back to CSV).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_PG_EPOCH_DAYS = 10_957

# PostgreSQL type (information_schema.columns.data_type) -> (kind, wire width or 0 = varying)
_TARGETS: dict[str, tuple[str, int]] = {
    "bigint": ("int", 8),
    "integer": ("int", 4),
    "smallint": ("int", 2),
    "double precision": ("float", 8),
    "real": ("float", 4),
    "boolean": ("bool", 1),
    "timestamp without time zone": ("timestamp", 8),
    "timestamp with time zone": ("timestamp", 8),
    "date": ("date", 4),
    "text": ("text", 0),
    "character varying": ("text", 0),
    "json": ("text", 0),
    "jsonb": ("jsonb", 0),
    "bytea": ("bytes", 0),
}


def _value_type(arrow_type: pa.DataType) -> pa.DataType:
    if isinstance(arrow_type, pa.BaseExtensionType):
        arrow_type = arrow_type.storage_type
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return arrow_type


def _compatible(arrow_type: pa.DataType, kind: str) -> bool:
    """Whether values of ``arrow_type`` go into a column of ``kind`` without text parsing."""
    t = _value_type(arrow_type)
    if kind == "int":
        return pa.types.is_integer(t)
    if kind == "float":
        return pa.types.is_floating(t) or pa.types.is_integer(t)
    if kind == "bool":
        return pa.types.is_boolean(t)
    if kind == "timestamp":
        return pa.types.is_timestamp(t)
    if kind == "date":
        return pa.types.is_date(t)
    if kind in ("text", "jsonb"):
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if kind == "bytes":
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)
    return False


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    width: int  # bytes on the wire for fixed-width kinds, 0 for varying


def binary_plan(batch: pa.RecordBatch, table_types: dict[str, str]) -> list[Column] | None:
    """The COPY column order for batches like ``batch`` into a table with ``table_types``, or
    None when some column has no exact binary encoding (the caller then uses CSV).

    Columns that are fixed-width in ``batch`` (numbers, timestamps, constants, strings of one
    length) come first, so that each row's leading fields form one record; later batches may
    differ, which only costs speed."""
    columns = []
    for field in batch.schema:
        target = _TARGETS.get(table_types.get(field.name, ""))
        if target is None or not _compatible(field.type, target[0]):
            return None
        columns.append(Column(field.name, *target))
    return sorted(columns, key=lambda c: _fixed_rank(batch.column(c.name), c))


def _fixed_rank(array: pa.Array, column: Column) -> int:
    if array.null_count == len(array):
        return 1
    if column.width:
        return 0 if array.null_count == 0 else 3
    if pa.types.is_dictionary(array.type):
        return 1 if array.null_count == 0 and len(array.dictionary) == 1 else 3
    if column.kind == "jsonb":
        return 3
    return 2 if _single_length(_as_binary_values(array)) is not None else 3


def _fixed_values(array: pa.Array, column: Column) -> np.ndarray:
    """A fixed-width array as numpy values in the wire's numeric type (native order); nulls
    become 0 (the caller writes the NULL marker for them)."""
    kind, width = column.kind, column.width
    if kind == "timestamp":
        if array.type.unit != "us":
            array = array.cast(pa.timestamp("us", array.type.tz), safe=False)
        values = _numbers(array.view(pa.int64()))
        return values - _PG_EPOCH_US
    if kind == "date":
        if pa.types.is_date64(array.type):
            array = array.cast(pa.date32())
        return _numbers(array.view(pa.int32())) - _PG_EPOCH_DAYS
    if kind == "bool":
        return _numbers(array.cast(pa.uint8()))
    if kind == "int":
        return _numbers(array).astype(f"i{width}", copy=False)
    if not pa.types.is_floating(array.type):
        array = array.cast(pa.float64())
    return _numbers(array).astype(f"f{width}", copy=False)


def _numbers(array: pa.Array) -> np.ndarray:
    if array.null_count:
        array = array.fill_null(
            pa.scalar(0, array.type) if not pa.types.is_floating(array.type) else 0.0
        )
    return array.to_numpy(zero_copy_only=False)


def _wire_dtype(column: Column) -> str:
    if column.kind == "bool":
        return "u1"
    if column.kind == "float":
        return f">f{column.width}"
    return f">i{column.width}"


def _as_binary_values(array: pa.Array) -> pa.Array:
    """Strings/JSON/binary as a plain ``binary`` array (no copy of the data)."""
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        array = array.cast(pa.large_binary())
    elif not pa.types.is_binary(array.type):
        array = array.cast(pa.binary())
    return array


def _prefixed(values: pa.Array, version: bytes = b"") -> pa.Array:
    """Each value as length prefix + (version byte) + bytes; nulls as the NULL marker."""
    lengths = pc.binary_length(values).fill_null(0).to_numpy(zero_copy_only=False)
    lengths = (lengths + len(version)).astype(">i4")
    prefix = _fixed_size(lengths.view(np.uint8).reshape(-1, 4))
    if version:
        prefix = pc.binary_join_element_wise(prefix, pa.scalar(version, pa.binary()), b"")
    out = pc.binary_join_element_wise(prefix, values.cast(pa.binary()), b"")
    if values.null_count:
        out = pc.if_else(values.is_null(), pa.scalar(_NULL, pa.binary()), out)
    return out


def _fixed_size(rows: np.ndarray) -> pa.Array:
    """An (n, width) uint8 array as an Arrow binary array of n values (one copy)."""
    n, width = rows.shape
    buffer = pa.py_buffer(np.ascontiguousarray(rows))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buffer]).cast(
        pa.binary()
    )


class _Block:
    """A run of null-free fixed-width fields, written as one structured numpy array."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.values: list[object] = []

    def add(self, dtype: str, value: object) -> None:
        self.fields.append((f"f{len(self.fields)}", dtype))
        self.values.append(value)

    def add_length(self, length: int) -> None:
        self.add(">i4", length)

    def build(self, n: int) -> np.ndarray:
        records = np.empty(n, dtype=np.dtype(self.fields))
        for (name, _), value in zip(self.fields, self.values, strict=True):
            records[name] = value
        return records


def _constant_bytes(array: pa.DictionaryArray, column: Column) -> bytes | None:
    """The encoded field of a dictionary column holding one value and no nulls, else None."""
    if array.null_count or len(array.dictionary) != 1 or not len(array):
        return None
    value = array.dictionary[0]
    return _encode_constant(column, value.type, value.as_py())


@functools.lru_cache(maxsize=256)
def _encode_constant(column: Column, type_: pa.DataType, value: object) -> bytes:
    single = pa.record_batch([pa.array([value], type_)], names=[column.name])
    return bytes(encode_batch(single, [column], header=False))


def encode_batch(
    batch: pa.RecordBatch, plan: Sequence[Column], *, header: bool = True
) -> memoryview:
    """The binary COPY tuples of ``batch`` (columns in ``plan`` order), without signature."""
    n = batch.num_rows
    pieces: list[pa.Array] = []
    block = _Block()
    if header:
        block.add(">i2", len(plan))

    def flush() -> None:
        nonlocal block
        if block.fields:
            records = block.build(n)
            pieces.append(_fixed_size(records.view(np.uint8).reshape(n, records.itemsize)))
            block = _Block()

    for column in plan:
        array = batch.column(column.name)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if isinstance(array.type, pa.BaseExtensionType):
            array = array.storage
        if n and array.null_count == n:  # all null: a constant NULL marker
            block.add("V4", np.frombuffer(_NULL, dtype="V4"))
            continue
        if pa.types.is_dictionary(array.type):
            constant = _constant_bytes(array, column)
            if constant is not None:
                block.add(f"V{len(constant)}", np.frombuffer(constant, dtype=f"V{len(constant)}"))
                continue
            if column.width == 0:  # encode the distinct values once, then gather
                encoded = _prefixed(_as_binary_values(array.dictionary), _version(column))
                field = encoded.take(array.indices)
                if array.null_count:
                    field = pc.if_else(array.is_null(), pa.scalar(_NULL, pa.binary()), field)
                flush()
                pieces.append(field)
                continue
            array = array.dictionary.take(array.indices)
        if column.width:  # fixed width on the wire
            if array.null_count == 0:
                block.add_length(column.width)
                block.add(_wire_dtype(column), _fixed_values(array, column))
                continue
            values = _fixed_values(array, column)
            rows = np.empty((n, 4 + column.width), np.uint8)
            rows[:, :4] = np.frombuffer(struct.pack(">i", column.width), np.uint8)
            wire = np.asarray(values).astype(_wire_dtype(column))
            rows[:, 4:] = wire.view(np.uint8).reshape(n, column.width)
            field = pc.if_else(array.is_null(), pa.scalar(_NULL, pa.binary()), _fixed_size(rows))
            flush()
            pieces.append(field)
            continue
        values = _as_binary_values(array)
        width = _single_length(values)
        if width is not None and column.kind != "jsonb":  # one length in this batch: fixed
            block.add_length(width)
            if width:
                data = values.buffers()[2]
                start = _offsets(values)[values.offset]
                block.add(f"S{width}", np.frombuffer(data, f"S{width}", n, start))
            continue
        flush()
        pieces.append(_prefixed(values, _version(column)))
    flush()
    return _interleave(pieces, n)


def _version(column: Column) -> bytes:
    return b"\x01" if column.kind == "jsonb" else b""


def _offsets(values: pa.Array) -> np.ndarray:
    dtype = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    return np.frombuffer(values.buffers()[1], dtype)


def _single_length(values: pa.Array) -> int | None:
    """The common byte length of all values when they share one and none is null."""
    if values.null_count or not len(values):
        return None
    offsets = _offsets(values)[values.offset : values.offset + len(values) + 1]
    lengths = np.diff(offsets)
    first = int(lengths[0])
    return first if (lengths == first).all() else None


def _interleave(pieces: list[pa.Array], n: int) -> memoryview:
    """Row-major concatenation of per-row pieces: piece 0 of row 0, piece 1 of row 0, ..."""
    if len(pieces) == 1:
        rows = pieces[0]
    else:
        total = sum(p.nbytes for p in pieces)
        kind = pa.binary() if total < (1 << 31) - (1 << 24) else pa.large_binary()
        pieces = [p if p.type == kind else p.cast(kind) for p in pieces]
        order = np.arange(len(pieces), dtype=np.int64) * n
        index = (order[None, :] + np.arange(n, dtype=np.int64)[:, None]).ravel()
        rows = pa.concat_arrays(pieces).take(pa.array(index))
    offsets = _offsets(rows)
    start, end = int(offsets[rows.offset]), int(offsets[rows.offset + len(rows)])
    return memoryview(rows.buffers()[2])[start:end]
