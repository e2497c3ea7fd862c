"""PostgreSQL result sets as Arrow: ``COPY (query) TO STDOUT (FORMAT binary)``, decoded column
by column with numpy, never row by row in Python.

Why this path (``benchmarks/read.py`` measures it against the others in one run): binary COPY
is the cheapest output the server has (no float/date formatting, which is most of the server's
time for CSV), and on this 2-core machine the server is the bottleneck, so the client's job is
to keep up and stay off its core. ADBC's driver decodes the same stream in C++ and is about as
fast, but needs a second connection, which would not see the caller's open transaction;
connectorx silently truncates ``numeric`` to 10 decimals. Reading on the warehouse's own
psycopg connection keeps transactions, parameter binding and errors in one place.

How: the receive loop calls libpq's ``PQgetCopyData`` (psycopg's ``pq`` layer) and appends
each row message to a bytearray, remembering where each row ends; the server sends one
CopyData message per row, and the decoder checks that every row's fields add up to exactly
its message, so a stream cut differently fails loudly instead of decoding garbage. Every
``_CHUNK_ROWS`` rows (or bytes) the chunk goes to a decoding thread while the next one is
received; decoding walks the columns, each step vectorised over all rows of the chunk (field
lengths are gathered through overlapping strided views, fixed-width values in one gather,
strings with a ragged gather). At most a few chunks are in flight, so :func:`read_batches`
streams with flat memory.

Types are exact: bool, int2/int4/int8 -> int16/int32/int64, float4/float8 -> float32/float64,
``numeric(p, s)`` -> ``decimal128(p, s)`` (``decimal256`` past 38 digits), text/varchar/char/
name -> string (NULL and '' stay distinct), json/jsonb -> string, bytea -> binary, date ->
date32, time -> time64[us], timestamp -> timestamp[us], timestamptz -> timestamp[us, UTC].
``numeric`` without a declared precision has no fixed Arrow decimal type: it is read as
float64, correctly rounded (as DuckDB's postgres scanner does); cast it in SQL to
``numeric(p, s)`` to get exact decimals. Other types (uuid, interval, arrays, enums...) are
cast to text by the server and arrive as strings. Infinite dates and timestamps, and NaN in a
``numeric(p, s)``, have no Arrow value: they raise :class:`WarehouseError` naming the column.
"""

from __future__ import annotations

import re
import selectors
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import psycopg.errors
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import pq

from .base import Params, WarehouseError, quote_ident

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_TRAILER = b"\xff\xff"  # a field count of -1 ends the stream
_PAD = 64  # zero bytes after each chunk, at least: fixed-width gathers never run past it
_SHORT_STRING = _PAD  # strings up to this long are gathered as fixed-width windows
_CHUNK_ROWS = 65_536  # rows per decoded chunk (query_arrow); iter_arrow uses its batch_rows
_CHUNK_BYTES = 32 << 20  # ... or this many bytes, whichever comes first
_IN_FLIGHT = 2  # chunks received but not yet handed out (flat memory for iter_arrow)
_EPOCH_DAYS = 10_957  # 2000-01-01 (PostgreSQL's epoch) in days since 1970-01-01
_EPOCH_US = _EPOCH_DAYS * 86_400 * 1_000_000


@dataclass(frozen=True)
class Column:
    """How one result column travels: its name, the Arrow type it becomes, the decoder of
    its binary COPY field, and whether the server casts it to text first."""

    name: str
    type_name: str  # PostgreSQL's, for messages
    arrow: pa.DataType
    decoder: str
    server_text: bool = False


# type OID -> (type name, decoder, Arrow type); anything else is cast to text by the server
_BINARY: dict[int, tuple[str, str, pa.DataType]] = {
    16: ("boolean", "bool", pa.bool_()),
    17: ("bytea", "bytes", pa.binary()),
    19: ("name", "text", pa.string()),
    20: ("bigint", ">i8", pa.int64()),
    21: ("smallint", ">i2", pa.int16()),
    23: ("integer", ">i4", pa.int32()),
    25: ("text", "text", pa.string()),
    26: ("oid", ">u4", pa.int64()),
    114: ("json", "text", pa.string()),
    700: ("real", ">f4", pa.float32()),
    701: ("double precision", ">f8", pa.float64()),
    705: ("unknown", "text", pa.string()),
    1042: ("character", "text", pa.string()),
    1043: ("character varying", "text", pa.string()),
    1082: ("date", "date", pa.date32()),
    1083: ("time", "time", pa.time64("us")),
    1114: ("timestamp", "timestamp", pa.timestamp("us")),
    1184: ("timestamptz", "timestamptz", pa.timestamp("us", tz="UTC")),
    3802: ("jsonb", "jsonb", pa.string()),
}
_NUMERIC_OID = 1700


def result_columns(description: Sequence[Any]) -> list[Column]:
    """The read plan of a result's columns, from a psycopg cursor's ``description``."""
    columns = []
    for col in description:
        oid = col.type_code
        if oid in _BINARY:
            type_name, decoder, arrow = _BINARY[oid]
            columns.append(Column(col.name, type_name, arrow, decoder))
        elif oid == _NUMERIC_OID:
            columns.append(Column(col.name, "numeric", _numeric_type(col), "text", True))
        else:
            columns.append(Column(col.name, f"type oid {oid}", pa.string(), "text", True))
    return columns


def _numeric_type(col: Any) -> pa.DataType:
    precision, scale = col.precision, col.scale
    if precision is None:
        return pa.float64()
    if precision <= 38:
        return pa.decimal128(precision, scale or 0)
    if precision <= 76:
        return pa.decimal256(precision, scale or 0)
    return pa.string()  # beyond any Arrow decimal: the exact text


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow) for c in columns])


def strip_sql(sql: str) -> str:
    """``sql`` without trailing semicolons and whitespace (it is nested in a subquery)."""
    return sql.strip().rstrip(";").rstrip()


def copy_sql(sql: str, columns: Sequence[Column]) -> str:
    """The binary COPY of ``sql``; columns without a binary decoder are cast to text (through
    positional aliases, so duplicate or odd column names cannot get in the way)."""
    if not any(c.server_text for c in columns):
        return f"COPY ({sql}) TO STDOUT (FORMAT binary)"
    aliases = [quote_ident(f"c{i}") for i in range(len(columns))]
    select = ", ".join(
        f"q.{alias}::text" if c.server_text else f"q.{alias}"
        for alias, c in zip(aliases, columns, strict=True)
    )
    return (
        f"COPY (select {select} from ({sql}) as q({', '.join(aliases)})) TO STDOUT (FORMAT binary)"
    )


_QUOTED = re.compile(
    r"(?:[Ee]'(?:[^'\\]|\\.|'')*')"  # E'...' (backslash escapes)
    r"|(?:'(?:[^']|'')*')"  # '...'
    r'|(?:"(?:[^"]|"")*")'  # "identifier"
    r"|(?:(\$[A-Za-z_0-9]*\$).*?\1)"  # $tag$...$tag$
    r"|(?:--[^\n]*)"  # -- comment
    r"|(?:/\*.*?\*/)",  # /* comment */
    re.DOTALL,
)


def to_pyformat(sql: str) -> str:
    """``?`` placeholders -> psycopg's ``%s``, except inside quotes and comments; every ``%``
    doubled (psycopg reads ``%`` everywhere in a query that has parameters)."""
    out, last = [], 0
    for match in _QUOTED.finditer(sql):
        out.append(sql[last : match.start()].replace("%", "%%").replace("?", "%s"))
        out.append(match.group(0).replace("%", "%%"))
        last = match.end()
    out.append(sql[last:].replace("%", "%%").replace("?", "%s"))
    return "".join(out)


# -- receiving -----------------------------------------------------------------------------
@dataclass
class Chunk:
    data: bytearray  # row messages back to back, then _PAD
    ends: list[int]  # end offset of each row message in data
    last: bool = False


def _receive(
    pgconn: Any, encoding: str, chunk_rows: int, chunk_bytes: int, pad: int
) -> Iterator[Chunk]:
    """The rows of the COPY in progress on ``pgconn``, in chunks (each followed by ``pad``
    zero bytes); ends when the server has sent everything and the COPY's result is OK (else
    raises the server's error)."""
    padding = bytes(pad)
    get = pgconn.get_copy_data
    selector: selectors.BaseSelector | None = None
    buf, ends = bytearray(), []
    append = ends.append
    header, trailer = True, False
    try:
        while True:
            nbytes, data = get(1)
            if nbytes > 0:
                if header:  # the signature, flags and extension area precede row 1
                    header = False
                    data = _skip_header(bytes(data))
                    if data == _TRAILER:  # no rows
                        trailer = True
                        continue
                    if not data:
                        continue
                elif nbytes == 2 and data == _TRAILER:
                    trailer = True
                    continue
                buf += data
                append(len(buf))
                if len(ends) >= chunk_rows or len(buf) >= chunk_bytes:
                    buf += padding
                    yield Chunk(buf, ends)
                    buf, ends = bytearray(), []
                    append = ends.append
                continue
            if nbytes == 0:  # nothing complete yet: wait for the socket
                if selector is None:
                    selector = selectors.DefaultSelector()
                    selector.register(pgconn.socket, selectors.EVENT_READ)
                selector.select()
                pgconn.consume_input()
                continue
            break
    finally:
        if selector is not None:
            selector.close()
    _finish_copy(pgconn, encoding)
    if not trailer:
        raise WarehouseError("binary COPY stream ended without its trailer")
    buf += padding
    yield Chunk(buf, ends, last=True)


def _skip_header(first: bytes) -> bytes:
    if not first.startswith(_SIGNATURE) or len(first) < 19:
        raise WarehouseError("binary COPY stream does not start with PostgreSQL's signature")
    extension = int.from_bytes(first[15:19], "big")
    return first[19 + extension :]


def _finish_copy(pgconn: Any, encoding: str) -> None:
    """Collect the COPY's final result (``PQgetCopyData`` has returned -1)."""
    error = None
    while (result := pgconn.get_result()) is not None:
        if result.status != pq.ExecStatus.COMMAND_OK and error is None:
            error = psycopg.errors.error_from_result(result, encoding=encoding)
    if error is not None:
        raise error


# -- decoding ------------------------------------------------------------------------------
# Fixed-width decoders: the field's numpy dtype (big-endian, as sent) and the Arrow type made
# of it, plus what is added to the value (PostgreSQL counts from 2000-01-01, Arrow from 1970)
# and whether the type's infinity sentinels must be refused.
@dataclass(frozen=True)
class _Fixed:
    dtype: str
    offset: int = 0
    sentinels: bool = False


_FIXED: dict[str, _Fixed] = {
    "bool": _Fixed("u1"),
    ">i2": _Fixed(">i2"),
    ">i4": _Fixed(">i4"),
    ">i8": _Fixed(">i8"),
    ">u4": _Fixed(">u4"),
    ">f4": _Fixed(">f4"),
    ">f8": _Fixed(">f8"),
    "date": _Fixed(">i4", _EPOCH_DAYS, True),
    "time": _Fixed(">i8"),
    "timestamp": _Fixed(">i8", _EPOCH_US, True),
    "timestamptz": _Fixed(">i8", _EPOCH_US, True),
}


@dataclass(frozen=True)
class _Run:
    """Consecutive fixed-width fields read with one gather per row: the row's field count
    (``header``), the length and value of each of ``columns``, then (``next_length``) the
    length of the variable-width column that follows. Rows where a field is NULL (so the
    window does not fit) are walked field by field instead."""

    header: bool
    columns: tuple[int, ...]
    next_length: bool
    record: np.dtype

    @property
    def size(self) -> int:
        return self.record.itemsize


def decode_plan(columns: Sequence[Column]) -> list[_Run | int]:
    """The decoding steps of a row: runs of fixed-width columns, and (an ``int``) the index
    of each variable-width column between them."""
    steps: list[_Run | int] = []
    header, run = True, []

    def close(next_length: bool) -> None:
        fields: list[tuple[str, str]] = [("count", ">i2")] if header else []
        for i in run:
            fields += [(f"l{i}", ">i4"), (f"v{i}", _FIXED[columns[i].decoder].dtype)]
        if next_length:
            fields.append(("next", ">i4"))
        if fields:
            steps.append(_Run(header, tuple(run), next_length, np.dtype(fields)))

    for i, column in enumerate(columns):
        if column.decoder in _FIXED:
            run.append(i)
        else:
            close(next_length=True)
            steps.append(i)
            header, run = False, []
    close(next_length=False)
    return steps


class _Views:
    """Overlapping strided views of one chunk: element k of the view of a dtype is the value
    starting at byte k, so one numpy gather reads a field (or a run of fields) of every row."""

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.octets = np.frombuffer(buf, dtype=np.uint8)

    def gather(self, dtype: np.dtype | str, at: np.ndarray) -> np.ndarray:
        """The ``dtype`` value at each offset of ``at``. Gathered as raw bytes (numpy copies
        a void item at about the cost of one byte; a structured or unaligned dtype costs up
        to ten times that), then reinterpreted."""
        dtype = np.dtype(dtype)
        raw = np.dtype(f"V{dtype.itemsize}")
        view = np.ndarray(
            (len(self.buf) - raw.itemsize + 1,), dtype=raw, buffer=self.buf, strides=(1,)
        )
        return view[at].view(dtype)

    def lengths(self, at: np.ndarray) -> np.ndarray:
        return self.gather(">i4", at).astype(np.int64)


def decode_chunk(
    chunk: Chunk, columns: Sequence[Column], schema: pa.Schema, plan: Sequence[_Run | int]
) -> pa.RecordBatch:
    """One chunk of binary COPY rows as a record batch, each step vectorised over the rows."""
    n = len(chunk.ends)
    if n == 0:
        return pa.record_batch([pa.array([], f.type) for f in schema], schema=schema)
    views = _Views(chunk.data)
    ends = np.asarray(chunk.ends, dtype=np.int64)
    pos = np.empty_like(ends)
    pos[0] = 0
    pos[1:] = ends[:-1]
    arrays: list[pa.Array | None] = [None] * len(columns)
    length: np.ndarray | None = None  # of the variable-width column up next
    for step in plan:
        # every step stays inside its rows (the padding covers a run's window past a row's
        # end), so a wrong length fails here instead of reading past the chunk
        if isinstance(step, _Run):
            pos, length = _read_run(step, columns, views, pos, arrays)
            if np.any(pos > ends):
                raise _overrun(columns, step.columns[-1] if step.columns else None)
            continue
        assert length is not None
        null = None
        if length.min() < 0:
            null = length < 0
            length = np.maximum(length, 0)
        if np.any(pos + length > ends):
            raise _overrun(columns, step)
        arrays[step] = _varlen(columns[step], views, pos, length, null)
        pos = pos + length
    if np.any(pos != ends):
        raise WarehouseError(
            "binary COPY rows do not end where their fields do: the stream is not one row "
            "per message as expected"
        )
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _overrun(columns: Sequence[Column], index: int | None) -> WarehouseError:
    where = f"column {columns[index].name!r}" if index is not None else "a row's field count"
    return WarehouseError(f"binary COPY field runs past its row at {where}: a malformed stream")


def _read_run(
    run: _Run,
    columns: Sequence[Column],
    views: _Views,
    pos: np.ndarray,
    arrays: list[pa.Array | None],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode ``run``'s columns into ``arrays``; return the positions after it and the next
    column's lengths."""
    record = views.gather(run.record, pos)
    if run.header:
        counts = record["count"]
        if np.any(counts != len(columns)):
            bad = int(counts[np.flatnonzero(counts != len(columns))[0]])
            raise WarehouseError(
                f"binary COPY row has {bad} fields where {len(columns)} were expected"
            )
    fits = np.ones(pos.size, dtype=bool)
    for i in run.columns:
        fits &= record[f"l{i}"] == np.dtype(_FIXED[columns[i].decoder].dtype).itemsize
    values = {
        i: record[f"v{i}"].astype(record.dtype[f"v{i}"].newbyteorder("=")) for i in run.columns
    }
    nulls: dict[int, np.ndarray | None] = dict.fromkeys(run.columns)
    length = record["next"].astype(np.int64) if run.next_length else None
    after = pos + run.size
    if not fits.all():  # rows with a NULL (or a surprise): walk them field by field
        rows = np.flatnonzero(~fits)
        at = pos[rows] + (2 if run.header else 0)
        for i in run.columns:
            column = columns[i]
            fixed = _FIXED[column.decoder]
            width = np.dtype(fixed.dtype).itemsize
            field = views.gather([("l", ">i4"), ("v", fixed.dtype)], at)  # length and value
            size = field["l"].astype(np.int64)
            null = size < 0
            if np.any(size[~null] != width):
                raise WarehouseError(
                    f"column {column.name!r} ({column.type_name}): a binary field of "
                    f"{int(size[~null][size[~null] != width][0])} bytes where {width} were "
                    "expected"
                )
            value = field["v"].astype(values[i].dtype)
            value[null] = 0
            values[i][rows] = value
            if null.any():
                mask = np.zeros(pos.size, dtype=bool)
                mask[rows] = null
                nulls[i] = mask
            at = at + 4 + np.where(null, 0, width)
        if run.next_length:
            assert length is not None
            length[rows] = views.lengths(at)
            at = at + 4
        after[rows] = at
    for i in run.columns:
        arrays[i] = _fixed_array(columns[i], values[i], nulls[i])
    return after, length


def _validity(null: np.ndarray | None) -> tuple[pa.Buffer | None, int]:
    if null is None:
        return None, 0
    return pa.py_buffer(np.packbits(~null, bitorder="little")), int(np.count_nonzero(null))


def _fixed_array(column: Column, values: np.ndarray, null: np.ndarray | None) -> pa.Array:
    fixed = _FIXED[column.decoder]
    validity, nulls = _validity(null)
    if column.decoder == "bool":
        data = np.packbits(values != 0, bitorder="little")
        return pa.Array.from_buffers(
            pa.bool_(), values.size, [validity, pa.py_buffer(data)], null_count=nulls
        )
    if fixed.dtype == ">u4":
        values = values.astype(np.int64)
    if fixed.sentinels and values.size:
        info = np.iinfo(values.dtype)
        present = values if null is None else values[~null]
        if present.size and (present.min() == info.min or present.max() > info.max - fixed.offset):
            raise WarehouseError(
                f"column {column.name!r} ({column.type_name}) holds infinity or a value "
                "outside Arrow's range: filter it or cast it in SQL"
            )
    if fixed.offset:
        values += np.asarray(fixed.offset, dtype=values.dtype)
    return pa.Array.from_buffers(
        column.arrow, values.size, [validity, pa.py_buffer(values)], null_count=nulls
    )


def _varlen(
    column: Column,
    views: _Views,
    data: np.ndarray,
    size: np.ndarray,
    null: np.ndarray | None,
) -> pa.Array:
    """A string/binary array of the ``size`` bytes at each offset ``data``."""
    if column.decoder == "jsonb":  # a version byte (1), then the text
        present = data if null is None else data[~null]
        if np.any(views.octets[present] != 1):
            raise WarehouseError(f"column {column.name!r}: unknown jsonb binary version")
        data = data + 1
        size = size - 1
        if null is not None:
            size[null] = 0
    n = data.size
    total = int(size.sum())
    if total >= 2**31:
        raise WarehouseError(
            f"column {column.name!r}: {total} bytes in one batch exceed Arrow's 2 GiB string "
            "limit; read it in smaller batches (iter_arrow)"
        )
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(size, out=offsets[1:])
    widest = int(size.max())
    if total == 0:
        values = np.empty(0, dtype=np.uint8)
    elif total == n * widest:  # every value the same length: one gather
        values = views.gather(f"V{widest}", data).view(np.uint8)
    elif widest <= _SHORT_STRING and n * widest <= 4 * total:
        # fixed-width windows, then the first `size` bytes of each
        grid = views.gather(f"V{widest}", data).view(np.uint8).reshape(n, widest)
        values = grid[np.arange(widest) < size[:, None]]
    else:  # ragged gather: output byte k comes from data[row] + (k - offsets[row])
        index = np.repeat(data - offsets[:-1], size) + np.arange(total, dtype=np.int64)
        values = views.octets[index]
    validity, nulls = _validity(null)
    arrow = pa.binary() if column.decoder == "bytes" else pa.string()
    array = pa.Array.from_buffers(
        arrow, n, [validity, pa.py_buffer(offsets), pa.py_buffer(values)], null_count=nulls
    )
    return _post_cast(array, column) if column.server_text else array


def _post_cast(array: pa.Array, column: Column) -> pa.Array:
    """Server-side text -> the column's Arrow type (numeric -> decimal or float64)."""
    if column.arrow == pa.string():
        return array
    if pa.types.is_decimal(column.arrow) and pc.any(pc.equal(array, "NaN")).as_py():
        raise WarehouseError(
            f"column {column.name!r} ({column.type_name}) holds NaN, which a decimal cannot: "
            "filter it or cast the column to double precision in SQL"
        )
    try:
        return pc.cast(array, column.arrow)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise WarehouseError(
            f"column {column.name!r} ({column.type_name}) cannot be read as {column.arrow}: {exc}"
        ) from exc


# -- the read ------------------------------------------------------------------------------
def describe(con: psycopg.Connection[Any], sql: str, params: Params) -> list[Column]:
    """The result columns of ``sql`` (planned and run with ``limit 0``)."""
    query = f"select * from ({sql}) as q limit 0"
    with con.cursor() as cur:
        cur.execute(to_pyformat(query) if params else query, params)
        return result_columns(cur.description or [])


def read_batches(
    con: psycopg.Connection[Any],
    sql: str,
    params: Params = None,
    *,
    columns: Sequence[Column] | None = None,
    chunk_rows: int = _CHUNK_ROWS,
    chunk_bytes: int = _CHUNK_BYTES,
) -> Iterator[pa.RecordBatch]:
    """Stream ``sql``'s result as record batches of at most ``chunk_rows`` rows.

    ``params`` (for ``?`` placeholders) are bound by psycopg (COPY takes no server-side
    parameters), with its quoting. The caller holds the connection for the whole iteration;
    closing the iterator early cancels the COPY and leaves the connection usable.
    """
    sql = strip_sql(sql)
    if columns is None:
        columns = describe(con, sql, params)
    schema = arrow_schema(columns)
    statement = copy_sql(sql, columns)
    if params:
        statement = to_pyformat(statement)
    plan = decode_plan(columns)
    pad = max([_PAD] + [step.size for step in plan if isinstance(step, _Run)])
    encoding = con.pgconn.parameter_status(b"client_encoding") or b"?"

    def decode(chunk: Chunk) -> pa.RecordBatch:
        batch = decode_chunk(chunk, columns, schema, plan)
        if encoding not in (b"UTF8", b"UNICODE"):  # text arrives in the client encoding
            try:
                batch.validate(full=True)
            except pa.ArrowInvalid as exc:
                raise WarehouseError(
                    f"text from PostgreSQL is not UTF-8 (client_encoding "
                    f"{encoding.decode()}): set client_encoding to UTF8. {exc}"
                ) from exc
        return batch

    pending: deque[Future[pa.RecordBatch] | pa.RecordBatch] = deque()
    pool: ThreadPoolExecutor | None = None
    try:
        with con.cursor() as cur, cur.copy(statement, params):
            for chunk in _receive(con.pgconn, con.info.encoding, chunk_rows, chunk_bytes, pad):
                if chunk.last:
                    pending.append(decode(chunk))  # nothing left to overlap with
                else:
                    if pool is None:  # a second chunk is coming: decode while receiving
                        pool = ThreadPoolExecutor(1, thread_name_prefix="retailml-pg-decode")
                    pending.append(pool.submit(decode, chunk))
                while len(pending) > (_IN_FLIGHT if not chunk.last else 0):
                    item = pending.popleft()
                    batch = item.result() if isinstance(item, Future) else item
                    if batch.num_rows:
                        yield batch
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
