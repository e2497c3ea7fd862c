"""PostgreSQL binary COPY encoding of Arrow batches, checked by decoding the bytes back."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from retailml.warehouse.pg_binary import binary_plan, encode_batch

PG_EPOCH = datetime(2000, 1, 1)


def _decode(payload: bytes, plan: list, rows: int) -> list[dict[str, object]]:
    """A minimal reader of binary COPY tuples (the inverse of the encoder, for the test)."""
    out, pos = [], 0
    for _ in range(rows):
        (count,) = struct.unpack_from(">h", payload, pos)
        pos += 2
        assert count == len(plan)
        row: dict[str, object] = {}
        for column in plan:
            (length,) = struct.unpack_from(">i", payload, pos)
            pos += 4
            if length == -1:
                row[column.name] = None
                continue
            raw = payload[pos : pos + length]
            pos += length
            if column.kind == "int":
                row[column.name] = int.from_bytes(raw, "big", signed=True)
            elif column.kind == "float":
                row[column.name] = struct.unpack(">d" if length == 8 else ">f", raw)[0]
            elif column.kind == "bool":
                row[column.name] = raw == b"\x01"
            elif column.kind == "timestamp":
                micros = int.from_bytes(raw, "big", signed=True)
                row[column.name] = PG_EPOCH + timedelta(microseconds=micros)
            elif column.kind == "date":
                days = int.from_bytes(raw, "big", signed=True)
                row[column.name] = date(2000, 1, 1) + timedelta(days=days)
            elif column.kind == "jsonb":
                assert raw[:1] == b"\x01"
                row[column.name] = raw[1:].decode()
            else:
                row[column.name] = raw.decode()
        out.append(row)
    assert pos == len(payload)
    return out


TYPES = {
    "id": "bigint",
    "small": "integer",
    "price": "double precision",
    "ok": "boolean",
    "at": "timestamp without time zone",
    "at_utc": "timestamp with time zone",
    "day": "date",
    "name": "text",
    "code": "text",
    "source": "text",
    "doc": "jsonb",
    "empty": "text",
}


def _batch() -> pa.RecordBatch:
    n = 4
    return pa.RecordBatch.from_pydict(
        {
            "id": pa.array([1, -2, None, 2**40], pa.int64()),
            "small": pa.array([1, 2, 3, 4], pa.int32()),
            "price": pa.array([1.5, None, -0.25, 1e10]),
            "ok": pa.array([True, False, None, True]),
            "at": pa.array(
                [datetime(2025, 3, 1, 10, 0, 1, 5), None, datetime(1999, 12, 31), PG_EPOCH],
                pa.timestamp("ns"),
            ),
            "at_utc": pa.array(
                [datetime(2025, 3, 1, 9, tzinfo=UTC)] * n, pa.timestamp("us", "UTC")
            ),
            "day": pa.array([date(2025, 3, 1), date(1970, 1, 1), None, date(2000, 1, 1)]),
            "name": pa.array(["Ada", "Grace Hopper", None, 'é, "quoted"\nnewline']),
            "code": pa.array(["AB", "CD", "EF", "GH"]),  # one length: a fixed-width field
            "source": pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), ["s3://b/k"]),
            "doc": pa.ExtensionArray.from_storage(
                pa.json_(pa.string()), pa.array(['{"a": 1}', None, "[]", "{}"])
            ),
            "empty": pa.nulls(n, pa.string()),
        }
    )


def test_every_supported_type_round_trips() -> None:
    batch = _batch()
    plan = binary_plan(batch, TYPES)
    assert plan is not None
    names = [c.name for c in plan]
    # fixed-width and constant fields lead, so each row starts with one structured record
    assert names.index("small") < names.index("name") and names.index("source") < names.index(
        "name"
    )
    decoded = _decode(bytes(encode_batch(batch, plan)), plan, batch.num_rows)
    expected = batch.to_pylist()
    for row, want in zip(decoded, expected, strict=True):
        want["at_utc"] = want["at_utc"].replace(tzinfo=None)
        if want["at"] is not None:
            want["at"] = (
                want["at"].to_pydatetime() if hasattr(want["at"], "to_pydatetime") else want["at"]
            )
        assert row == want


def test_varying_strings_and_dictionaries_with_several_values() -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "name": pa.array(["a", "bbb", "", None, "cc"]),
            "code": pa.DictionaryArray.from_arrays(
                pa.array([1, 0, None, 1, 0]), ["web", "marketplace"]
            ),
        }
    )
    plan = binary_plan(batch, {"name": "text", "code": "character varying"})
    decoded = _decode(bytes(encode_batch(batch, plan)), plan, 5)
    assert decoded == batch.to_pylist()


@pytest.mark.parametrize(
    ("column", "table_type"),
    [
        (pa.array([1.5]), "numeric"),  # no exact binary form here: CSV instead
        (pa.array(["1"]), "bigint"),  # text into a number column: the server parses it
        (pa.array([1]), "text"),
        (pa.array([b"x"], pa.binary()), "uuid"),
    ],
)
def test_columns_without_an_exact_binary_form_fall_back(column: pa.Array, table_type: str) -> None:
    batch = pa.RecordBatch.from_arrays([column], names=["x"])
    assert binary_plan(batch, {"x": table_type}) is None


def test_empty_and_single_row_batches() -> None:
    batch = _batch()
    plan = binary_plan(batch, TYPES)
    assert bytes(encode_batch(batch.slice(0, 0), plan)) == b""
    one = batch.slice(3, 1)
    assert len(_decode(bytes(encode_batch(one, plan)), plan, 1)) == 1
