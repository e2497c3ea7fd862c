"""Pure parsing of export files and Mongo documents (no servers)."""

from __future__ import annotations

import gzip
import io
import json
from datetime import date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailml.ingest.conform import RAW_TEXT, conform_batch, try_cast
from retailml.ingest.mongo_docs import COLLECTIONS, DocumentTypeError, document_row, to_arrow
from retailml.ingest.s3_orders import (
    CONTRACT,
    ORDER_LINE_SCHEMA,
    BadObjectError,
    conform,
    dt_partition,
    object_format,
    parse_object,
    with_metadata,
)

CUSTOMERS = next(spec for spec in COLLECTIONS if spec.collection == "customers")
TARGET = {f.name: f.type for f in ORDER_LINE_SCHEMA}


def _line(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "order_id": "O1",
        "line_number": 1,
        "customer_id": "C1",
        "product_id": "P1",
        "quantity": 2,
        "unit_price": 3.5,
        "discount_amount": 0.0,
        "currency": "EUR",
        "channel": "web",
        "ordered_at": "2025-03-01 10:00:00",
        "exported_at": "2025-03-01 23:00:00",
    }
    row.update(overrides)
    return row


def _raw_text(table: pa.Table) -> list[dict[str, str] | None]:
    return [None if v is None else json.loads(v) for v in table.column(RAW_TEXT).to_pylist()]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("orders/dt=2025-01-01/p.parquet", "parquet"),
        ("a/p.jsonl.gz", "jsonl.gz"),
        ("a/p.jsonl", "jsonl"),
        ("a/p.csv", "csv"),
        ("a/p.csv.gz", "csv.gz"),
    ],
)
def test_object_format(key: str, expected: str) -> None:
    assert object_format(key) == expected


def test_unknown_format_is_a_bad_object() -> None:
    with pytest.raises(BadObjectError, match="unknown file format"):
        object_format("orders/x.csv.bz2")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("orders/dt=2025-03-01/part-0000.parquet", date(2025, 3, 1)),
        ("dt=2025-12-31/x.csv", date(2025, 12, 31)),
        ("orders/2025-03-01/part.parquet", None),
        ("orders/dt=2025-02-30/part.parquet", None),
    ],
)
def test_dt_partition(key: str, expected: date | None) -> None:
    assert dt_partition(key) == expected


def test_conform_fills_missing_columns_and_keeps_new_ones() -> None:
    table = pa.table({"order_id": ["O1"], "quantity": [3], "gift_wrap": [True]})
    out = conform(table)
    assert out.column_names[: len(ORDER_LINE_SCHEMA)] == ORDER_LINE_SCHEMA.names
    assert out.column("customer_id").to_pylist() == [None]
    assert out.column("gift_wrap").to_pylist() == [True]
    assert out.schema.field("quantity").type == pa.int64()
    assert out.column(RAW_TEXT).to_pylist() == [None]


def test_a_changed_type_is_kept_as_text_and_reported_not_rejected() -> None:
    batch = pa.table({"order_id": ["O1", "O2", "O3"], "quantity": ["3", "three", None]})
    conformed = conform_batch(batch, TARGET, contract=CONTRACT)
    out = pa.Table.from_batches([conformed.batch])
    assert out.column("quantity").to_pylist() == [3, None, None]
    assert _raw_text(out) == [None, {"quantity": "three"}, None]
    changed = [n for n in conformed.notes if n.change == "type"]
    assert len(changed) == 1 and changed[0].column == "quantity"
    assert changed[0].rows_as_text == 1 and changed[0].found_type == "string"
    assert "kept as text" in changed[0].describe()
    missing = {n.column for n in conformed.notes if n.change == "missing"}
    assert "customer_id" in missing and "quantity" not in missing


def test_a_typed_source_reports_a_type_change_even_when_every_value_casts() -> None:
    batch = pa.table(
        {"quantity": pa.array([1.0, 2.0]), "line_number": pa.array([1, 2], pa.int32())}
    )
    notes = conform_batch(batch, TARGET, contract=CONTRACT, report_missing=False).notes
    assert [(n.column, n.change, n.rows_as_text) for n in notes] == [("quantity", "type", 0)]


@pytest.mark.parametrize(
    ("values", "target", "expected", "failed"),
    [
        (["1", " 2 ", "x", None, "3.5"], pa.int64(), [1, 2, None, None, None], [2, 4]),
        (["1.5", "1e3", "abc", "inf"], pa.float64(), [1.5, 1000.0, None, float("inf")], [2]),
        (["true", "FALSE", "maybe"], pa.bool_(), [True, False, None], [2]),
        (
            ["2025-03-01 10:00:00", "2025-02-30 10:00:00", "yesterday"],
            pa.timestamp("us"),
            [datetime(2025, 3, 1, 10), None, None],
            [1, 2],
        ),
        ([1, 2], pa.string(), ["1", "2"], []),
    ],
)
def test_try_cast_keeps_what_fits_and_names_what_does_not(
    values: list[object], target: pa.DataType, expected: list[object], failed: list[int]
) -> None:
    result, mask = try_cast(pa.array(values), target)
    assert result.to_pylist() == expected
    assert ([] if mask is None else [i for i, bad in enumerate(mask) if bad]) == failed


def test_jsonl_with_bad_lines_keeps_the_good_ones() -> None:
    body = gzip.compress(
        "\n".join(
            [json.dumps(_line()), "{broken", json.dumps(_line(line_number=2)), "[1, 2]"]
        ).encode()
    )
    rows, bad = parse_object("orders/dt=2025-03-01/p.jsonl.gz", body)
    assert rows.column("line_number").to_pylist() == [1, 2]
    assert rows.column("ordered_at").to_pylist()[0] == datetime(2025, 3, 1, 10, 0)
    assert [b.object_key.rsplit("#", 1)[1] for b in bad] == ["line=2", "line=4"]
    assert bad[0].record == "{broken" and "unparsable JSON line" in bad[0].error


def test_jsonl_with_a_mistyped_value_keeps_the_row_and_the_text() -> None:
    body = "\n".join([json.dumps(_line()), json.dumps(_line(line_number=2, quantity="two"))])
    rows, bad = parse_object("orders/p.jsonl", body.encode())
    assert not bad
    assert rows.column("quantity").to_pylist() == [2, None]
    assert _raw_text(rows) == [None, {"quantity": "two"}]
    assert rows.column("unit_price").to_pylist() == [3.5, 3.5]


def _csv(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_csv_loads_good_rows_and_quarantines_a_broken_one() -> None:
    header = ",".join(CONTRACT)
    good = "O1,1,C1,P1,2,3.5,0.0,EUR,web,2025-03-01 10:00:00,2025-03-01 23:00:00"
    guest = "O2,1,,P2,1,9.0,0.5,EUR,app,2025-03-01 11:00:00,2025-03-01 23:00:00"
    broken = "O3,1,C3,P3"
    mistyped = "O4,1,C4,P4,lots,1.0,0.0,EUR,web,2025-03-01 12:00:00,2025-03-01 23:00:00"
    rows, bad = parse_object("orders/p.csv", _csv([header, good, broken, guest, mistyped]))
    assert rows.column("order_id").to_pylist() == ["O1", "O2", "O4"]
    assert rows.column("customer_id").to_pylist() == ["C1", None, "C4"]
    assert rows.column("quantity").to_pylist() == [2, 1, None]
    assert rows.column("ordered_at").type == pa.timestamp("us")
    assert _raw_text(rows) == [None, None, {"quantity": "lots"}]
    assert len(bad) == 1 and bad[0].record == broken
    assert "4 fields, header has 11" in bad[0].error


def test_gzipped_csv_with_reordered_and_extra_columns() -> None:
    body = gzip.compress(_csv(["quantity,order_id,note", "5,O1,hello", '6,O2,"a, b"']))
    rows, bad = parse_object("orders/p.csv.gz", body)
    assert not bad
    assert rows.column("order_id").to_pylist() == ["O1", "O2"]
    assert rows.column("quantity").to_pylist() == [5, 6]
    assert rows.column("note").to_pylist() == ["hello", "a, b"]


@pytest.mark.parametrize(
    ("body", "match"),
    [(b"", None), (b"a,a\n1,2\n", "repeated"), (b"\n1,2\n", "no header")],
)
def test_csv_without_a_usable_header(body: bytes, match: str | None) -> None:
    if match is None:
        rows, bad = parse_object("orders/p.csv", body)
        assert rows.num_rows == 0 and not bad
        return
    with pytest.raises(BadObjectError, match=match):
        parse_object("orders/p.csv", body)


def test_corrupt_parquet_is_a_bad_object() -> None:
    with pytest.raises(BadObjectError, match="Parquet"):
        parse_object("orders/p.parquet", b"PAR1 nope")


def test_parquet_corrupt_in_the_middle_is_a_bad_object() -> None:
    sink = io.BytesIO()
    table = pa.Table.from_pylist(
        [_line(line_number=i) | {"ordered_at": None, "exported_at": None} for i in range(5000)],
        schema=ORDER_LINE_SCHEMA,
    )
    pq.write_table(table, sink, row_group_size=1000, compression="snappy")
    data = bytearray(sink.getvalue())
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    column = meta.row_group(3).column(0)  # corrupt the 4th row group's first column chunk
    start = column.data_page_offset
    data[start + 20 : start + 60] = b"\xff" * 40
    with pytest.raises(BadObjectError, match="corrupt Parquet"):
        parse_object("orders/p.parquet", bytes(data))


def test_parquet_round_trip() -> None:
    sink = io.BytesIO()
    rows = [_line() | {"ordered_at": datetime(2025, 3, 1, 10), "exported_at": datetime(2025, 3, 2)}]
    pq.write_table(pa.Table.from_pylist(rows, schema=ORDER_LINE_SCHEMA), sink)
    parsed, bad = parse_object("orders/p.parquet", sink.getvalue())
    assert not bad and parsed.drop_columns([RAW_TEXT]).to_pylist() == rows


def test_metadata_columns_are_constant_per_object() -> None:
    batch = conform_batch(pa.table({"order_id": ["O1", "O2"]}), TARGET, contract=CONTRACT).batch
    at = datetime(2025, 3, 2, 4, 0).astimezone()
    out = with_metadata(batch, load_id=42, extracted_at=at)
    assert out.column("_load_id").to_pylist() == [42, 42]
    assert pa.types.is_dictionary(out.schema.field("_load_id").type)
    assert out.column("_extracted_at").to_pylist()[0] == at
    assert out.schema.names[-3:] == ["_raw_text", "_load_id", "_extracted_at"]


def test_load_ids_increase_and_differ() -> None:
    from retailml.ingest.ledger import new_load_id

    ids = [new_load_id() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert 0 < ids[0] < 2**63 - 1


def _customer(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "_id": "C1",
        "email": "a@example.com",
        "name": {"first": "A", "last": "B"},
        "loyalty_tier": "gold",
        "signup_channel": "app",
        "marketing_opt_in": False,
        "created_at": datetime(2025, 1, 1),
        "updated_at": datetime(2025, 2, 1),
    }
    doc.update(overrides)
    return doc


def test_document_row_keeps_the_whole_document_as_json() -> None:
    row = document_row(_customer(), CUSTOMERS)
    assert row["marketing_opt_in"] is False
    assert '"first": "A"' in row["_document"]
    table = to_arrow([row], CUSTOMERS, "b1", 7)
    assert table.schema.field("_document").type.extension_name == "arrow.json"
    assert table.column("_batch_id").to_pylist() == ["b1"]
    assert table.column("_load_id").to_pylist() == [7]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("marketing_opt_in", 1),
        ("created_at", "yesterday"),
        ("loyalty_tier", 3.5),
        ("updated_at", None),
    ],
)
def test_document_with_a_wrong_type_names_the_field(field: str, value: object) -> None:
    with pytest.raises(DocumentTypeError, match=field):
        document_row(_customer(**{field: value}), CUSTOMERS)


@pytest.mark.parametrize("key", ["orders/p.csv.gz", "orders/p.jsonl.gz"])
def test_a_corrupt_gzip_stream_is_a_bad_object(key: str) -> None:
    body = gzip.compress(b"order_id\nO1\n" * 1000)
    with pytest.raises(BadObjectError, match=r"gzip|CSV"):
        parse_object(key, body[:40] + b"\x00" * 40 + body[80:])
