"""The binary COPY decoder (:mod:`retailml.warehouse.pg_read`) on streams built here byte by
byte, so every NULL pattern and every malformed stream can be tried without a server (the
integration tests read the same types from a real PostgreSQL)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from retailml.warehouse.base import WarehouseError
from retailml.warehouse.pg_read import (
    Chunk,
    Column,
    arrow_schema,
    copy_sql,
    decode_chunk,
    decode_plan,
    result_columns,
    strip_sql,
    to_pyformat,
)

PG_EPOCH = datetime(2000, 1, 1)


@dataclass(frozen=True)
class Described:
    """What a psycopg cursor's ``description`` entry offers (name, type OID, typmod parts)."""

    name: str
    type_code: int
    precision: int | None = None
    scale: int | None = None


def _encode(oid: int, value: object) -> bytes:
    """One value in PostgreSQL's binary format (the server's side, for the test)."""
    if oid == 16:
        return b"\x01" if value else b"\x00"
    if oid in (20, 21, 23):
        return int(value).to_bytes({20: 8, 21: 2, 23: 4}[oid], "big", signed=True)  # type: ignore[call-overload]
    if oid == 701:
        return struct.pack(">d", value)
    if oid == 700:
        return struct.pack(">f", value)
    if oid == 1082:
        assert isinstance(value, date)
        return struct.pack(">i", (value - PG_EPOCH.date()).days)
    if oid in (1114, 1184):
        assert isinstance(value, datetime)
        naive = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        return struct.pack(">q", (naive - PG_EPOCH) // timedelta(microseconds=1))
    if oid == 1083:
        assert isinstance(value, time)
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 10**6
        return struct.pack(">q", micros + value.microsecond)
    if oid == 3802:
        return b"\x01" + str(value).encode()
    if oid == 17:
        assert isinstance(value, bytes)
        return value
    return str(value).encode()


def _stream(oids: list[int], rows: list[tuple[object, ...]]) -> list[bytes]:
    """The row messages of a binary COPY of ``rows`` (one message per row, as the server
    sends them; the signature and trailer are the receiver's business)."""
    messages = []
    for row in rows:
        parts = [struct.pack(">h", len(oids))]
        for oid, value in zip(oids, row, strict=True):
            if value is None:
                parts.append(struct.pack(">i", -1))
            else:
                data = _encode(oid, value)
                parts.append(struct.pack(">i", len(data)) + data)
        messages.append(b"".join(parts))
    return messages


def _chunk(messages: list[bytes], pad: int = 256) -> Chunk:
    data, ends = bytearray(), []
    for message in messages:
        data += message
        ends.append(len(data))
    data += bytes(pad)
    return Chunk(data, ends)


def _decode(described: list[Described], messages: list[bytes]) -> pa.RecordBatch:
    columns = result_columns(described)
    return decode_chunk(_chunk(messages), columns, arrow_schema(columns), decode_plan(columns))


TYPES = [
    Described("id", 23),
    Described("name", 25),
    Described("flag", 16),
    Described("small", 21),
    Described("big", 20),
    Described("x", 701),
    Described("y", 700),
    Described("day", 1082),
    Described("at", 1184),
    Described("local", 1114),
    Described("clock", 1083),
    Described("doc", 3802),
    Described("blob", 17),
    Described("label", 1043),
]


def _random_rows(n: int, seed: int) -> list[tuple[object, ...]]:
    rng = np.random.default_rng(seed)

    def maybe(value: object, p: float) -> object:
        return None if rng.random() < p else value

    rows = []
    for i in range(n):
        rows.append(
            (
                i,
                maybe("n" * int(rng.integers(0, 12)), 0.2),
                maybe(bool(rng.random() < 0.5), 0.3),
                maybe(int(rng.integers(-(2**15), 2**15)), 0.3),
                maybe(int(rng.integers(-(2**62), 2**62)), 0.3),
                maybe(float(rng.normal()), 0.3),
                maybe(float(np.float32(rng.normal())), 0.3),
                maybe(date(2020, 1, 1) + timedelta(days=int(rng.integers(-9000, 9000))), 0.3),
                maybe(
                    datetime(2024, 1, 1, tzinfo=UTC)
                    + timedelta(microseconds=int(rng.integers(-(10**15), 10**15))),
                    0.3,
                ),
                maybe(datetime(1999, 12, 31, 23, 59, 59, 999999), 0.3),
                maybe(time(int(rng.integers(0, 24)), 30, 15, 7), 0.3),
                maybe(f'{{"k": {i}}}', 0.3),
                maybe(bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8)), 0.3),
                maybe("long text " * int(rng.integers(0, 30)), 0.3),
            )
        )
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_pattern_of_nulls_decodes_to_the_values(seed: int) -> None:
    rows = _random_rows(400, seed)
    batch = _decode(TYPES, _stream([d.type_code for d in TYPES], rows))
    assert batch.schema.types == [
        pa.int32(), pa.string(), pa.bool_(), pa.int16(), pa.int64(), pa.float64(),
        pa.float32(), pa.date32(), pa.timestamp("us", tz="UTC"), pa.timestamp("us"),
        pa.time64("us"), pa.string(), pa.binary(), pa.string(),
    ]  # fmt: skip
    assert [tuple(r.values()) for r in batch.to_pylist()] == rows


def test_no_nulls_and_all_nulls() -> None:
    rows = [(i, "same", True, 1, 2, 0.5, 0.25, date(2024, 1, 1)) for i in range(50)]
    described = TYPES[:8]
    full = _decode(described, _stream([d.type_code for d in described], rows))
    assert [tuple(r.values()) for r in full.to_pylist()] == rows
    empty_rows = [(i, None, None, None, None, None, None, None) for i in range(5)]
    nulls = _decode(described, _stream([d.type_code for d in described], empty_rows))
    assert [tuple(r.values()) for r in nulls.to_pylist()] == empty_rows
    assert all(nulls.column(i).null_count == 5 for i in range(1, 8))


def test_empty_string_and_null_stay_distinct() -> None:
    described = [Described("s", 25), Described("t", 25)]
    batch = _decode(described, _stream([25, 25], [("", None), (None, ""), ("", "")]))
    assert batch.to_pylist() == [
        {"s": "", "t": None},
        {"s": None, "t": ""},
        {"s": "", "t": ""},
    ]


def test_server_side_text_becomes_decimals_floats_or_strings() -> None:
    described = [
        Described("exact", 1700, 12, 2),
        Described("loose", 1700),
        Described("wide", 1700, 50, 5),
        Described("uuid", 2950),
    ]
    columns = result_columns(described)
    assert [c.server_text for c in columns] == [True, True, True, True]
    assert arrow_schema(columns).types == [
        pa.decimal128(12, 2), pa.float64(), pa.decimal256(50, 5), pa.string(),
    ]  # fmt: skip
    rows = [("-1234567890.12", "0.1", "1" * 45 + ".12345", "a0ee"), (None, "NaN", None, None)]
    batch = _decode(described, _stream([25, 25, 25, 25], rows))
    first, second = batch.to_pylist()
    assert first["exact"] == Decimal("-1234567890.12") and first["loose"] == 0.1
    assert first["wide"] == Decimal("1" * 45 + ".12345") and first["uuid"] == "a0ee"
    assert second["exact"] is None and np.isnan(second["loose"])
    with pytest.raises(WarehouseError, match=r"'exact'.*NaN"):
        _decode(described, _stream([25, 25, 25, 25], [("NaN", "1", "1", "x")]))


def test_infinite_dates_and_timestamps_are_refused_by_name() -> None:
    infinity = [struct.pack(">hi", 1, 4) + struct.pack(">i", 2**31 - 1)]
    with pytest.raises(WarehouseError, match=r"'day'.*infinity"):
        _decode([Described("day", 1082)], infinity)
    minus = [struct.pack(">hi", 1, 8) + struct.pack(">q", -(2**63))]
    with pytest.raises(WarehouseError, match=r"'at'.*infinity"):
        _decode([Described("at", 1184)], minus)


def test_malformed_streams_fail_loudly() -> None:
    described = [Described("a", 23), Described("s", 25)]
    good = _stream([23, 25], [(1, "x"), (2, "yy")])
    with pytest.raises(WarehouseError, match="3 fields where 2"):
        _decode(described, [struct.pack(">h", 3) + good[0][2:]])
    wrong_width = struct.pack(">hi", 2, 8) + bytes(8) + struct.pack(">i", 1) + b"x"
    with pytest.raises(WarehouseError, match=r"'a'.*8 bytes where 4"):
        _decode(described, [wrong_width])
    with pytest.raises(WarehouseError, match="do not end where their fields do"):
        _decode(described, [good[0] + b"junk", good[1]])
    runaway = struct.pack(">hi", 2, 4) + struct.pack(">i", 1) + struct.pack(">i", 10**6) + b"x"
    with pytest.raises(WarehouseError):
        _decode(described, [runaway])
    with pytest.raises(WarehouseError, match="jsonb"):
        _decode([Described("doc", 3802)], [struct.pack(">hi", 1, 3) + b"\x02{}"])


def test_an_empty_chunk_is_an_empty_batch_of_the_schema() -> None:
    columns = result_columns(TYPES)
    batch = decode_chunk(_chunk([]), columns, arrow_schema(columns), decode_plan(columns))
    assert batch.num_rows == 0 and batch.schema == arrow_schema(columns)


def test_plan_reads_runs_of_fixed_width_fields_together() -> None:
    columns = result_columns(TYPES)
    steps = decode_plan(columns)
    names = [
        columns[s].name if isinstance(s, int) else [columns[i].name for i in s.columns]
        for s in steps
    ]
    assert names == [
        ["id"], "name", ["flag", "small", "big", "x", "y", "day", "at", "local", "clock"],
        "doc", [], "blob", [], "label",
    ]  # fmt: skip


def test_copy_sql_casts_only_what_has_no_binary_decoder() -> None:
    plain = [Column("a", "integer", pa.int32(), ">i4")]
    assert copy_sql("select 1 as a", plain) == "COPY (select 1 as a) TO STDOUT (FORMAT binary)"
    mixed = [*plain, Column("a", "numeric", pa.float64(), "text", server_text=True)]
    assert copy_sql("select 1 as a, 2.0 as a", mixed) == (
        'COPY (select q."c0", q."c1"::text from (select 1 as a, 2.0 as a) as q("c0", "c1")) '
        "TO STDOUT (FORMAT binary)"
    )
    assert strip_sql("  select 1 ;; \n") == "select 1"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select ? where x like '%a'", "select %s where x like '%%a'"),
        ("select '?', ?", "select '?', %s"),
        ('select "a?b" from t where c = ?', 'select "a?b" from t where c = %s'),
        ("select E'it\\'s ?' , ?", "select E'it\\'s ?' , %s"),
        ("select $$ ? $$, $q$ ' ? $q$, ?", "select $$ ? $$, $q$ ' ? $q$, %s"),
        ("select ? -- why ?\n, /* ? */ ?", "select %s -- why ?\n, /* ? */ %s"),
        ("select 'it''s ?', ?", "select 'it''s ?', %s"),
    ],
)
def test_placeholders_outside_quotes_and_comments(sql: str, expected: str) -> None:
    assert to_pyformat(sql) == expected
