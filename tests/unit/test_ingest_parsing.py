"""Pure parsing of export files and Mongo documents (no servers)."""

from __future__ import annotations

import gzip
import io
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailml.ingest.mongo_docs import COLLECTIONS, DocumentTypeError, document_row, to_arrow
from retailml.ingest.s3_orders import (
    ORDER_LINE_SCHEMA,
    BadObjectError,
    conform,
    object_format,
    parse_object,
)

CUSTOMERS = next(spec for spec in COLLECTIONS if spec.collection == "customers")


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


@pytest.mark.parametrize(
    ("key", "expected"),
    [("orders/dt=2025-01-01/p.parquet", "parquet"), ("a/p.jsonl.gz", "jsonl.gz")],
)
def test_object_format(key: str, expected: str) -> None:
    assert object_format(key) == expected


def test_unknown_format_is_a_bad_object() -> None:
    with pytest.raises(BadObjectError, match="unknown file format"):
        object_format("orders/x.csv.bz2")


def test_conform_fills_missing_columns_and_keeps_new_ones() -> None:
    table = pa.table({"order_id": ["O1"], "quantity": [3], "gift_wrap": [True]})
    out = conform(table)
    assert out.column_names[: len(ORDER_LINE_SCHEMA)] == ORDER_LINE_SCHEMA.names
    assert out.column("customer_id").to_pylist() == [None]
    assert out.column("gift_wrap").to_pylist() == [True]
    assert out.schema.field("quantity").type == pa.int64()


def test_conform_names_the_column_with_an_impossible_type() -> None:
    with pytest.raises(BadObjectError, match="'quantity'"):
        conform(pa.table({"quantity": ["three"]}))


def test_jsonl_with_bad_lines_keeps_the_good_ones() -> None:
    import json

    body = gzip.compress(
        "\n".join([json.dumps(_line()), "{broken", json.dumps(_line(line_number=2))]).encode()
    )
    rows, bad = parse_object("orders/dt=2025-03-01/p.jsonl.gz", body)
    assert rows.column("line_number").to_pylist() == [1, 2]
    assert rows.column("ordered_at").to_pylist()[0] == datetime(2025, 3, 1, 10, 0)
    assert len(bad) == 1 and bad[0].object_key.endswith("#line=2") and bad[0].record == "{broken"


def test_corrupt_parquet_is_a_bad_object() -> None:
    with pytest.raises(BadObjectError, match="Parquet"):
        parse_object("orders/p.parquet", b"PAR1 nope")


def test_parquet_round_trip() -> None:
    sink = io.BytesIO()
    rows = [_line() | {"ordered_at": datetime(2025, 3, 1, 10), "exported_at": datetime(2025, 3, 2)}]
    pq.write_table(pa.Table.from_pylist(rows, schema=ORDER_LINE_SCHEMA), sink)
    parsed, bad = parse_object("orders/p.parquet", sink.getvalue())
    assert not bad and parsed.to_pylist() == rows


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
    table = to_arrow([row], CUSTOMERS, "b1")
    assert table.schema.field("_document").type.extension_name == "arrow.json"
    assert table.column("_batch_id").to_pylist() == ["b1"]


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
