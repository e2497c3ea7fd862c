"""Ingestion against real servers: the S3 protocol (moto), MongoDB wire protocol (nx-27017),
DuckDB and PostgreSQL."""

from __future__ import annotations

import gzip
import io
import json
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailml import runtime
from retailml.config import Settings
from retailml.ingest import ingest_all
from retailml.ingest.s3_orders import ORDER_LINE_SCHEMA


def _lines(order: str, n: int, day: str = "2025-03-01") -> list[dict[str, object]]:
    return [
        {
            "order_id": order,
            "line_number": i + 1,
            "customer_id": "C0000001",
            "product_id": f"P{i:05d}",
            "quantity": 1 + i,
            "unit_price": 9.5,
            "discount_amount": 0.0,
            "currency": "EUR",
            "channel": "web",
            "ordered_at": datetime.fromisoformat(f"{day} 10:00:00"),
            "exported_at": datetime.fromisoformat(f"{day} 23:00:00"),
        }
        for i in range(n)
    ]


def _parquet(rows: list[dict[str, object]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=ORDER_LINE_SCHEMA), sink)
    return sink.getvalue()


def _jsonl_gz(rows: list[dict[str, object]], extra_lines: list[str] = ()) -> bytes:
    text = [json.dumps(r, default=lambda v: v.strftime("%Y-%m-%d %H:%M:%S")) for r in rows]
    return gzip.compress("\n".join([*text, *extra_lines]).encode())


def _customer(cid: str, updated: str, **extra: object) -> dict[str, object]:
    doc = {
        "_id": cid,
        "email": f"{cid.lower()}@example.com",
        "name": {"first": "Ada", "last": "Lovelace"},
        "address": {"street": "Main 1", "city": "Utrecht", "postcode": "3511", "country": "NL"},
        "loyalty_tier": "bronze",
        "signup_channel": "web",
        "marketing_opt_in": True,
        "created_at": datetime(2025, 1, 1),
        "updated_at": datetime.fromisoformat(updated),
    }
    doc.update(extra)
    return doc


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "postgres":
        return request.getfixturevalue("pg_settings")
    return settings


def _run(settings: Settings):
    warehouse = runtime.open_warehouse(settings)
    objects = runtime.open_object_store(settings, create_bucket=True)
    db = runtime.open_mongo(settings)
    return ingest_all(warehouse, objects, db, prefix=settings.s3_prefix), warehouse


def test_incremental_exactly_once_and_reupload(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    db = runtime.open_mongo(env)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 3)))
    objects.put("orders/dt=2025-03-01/part-0001.jsonl.gz", _jsonl_gz(_lines("O2", 2)))
    db.customers.insert_many([_customer("C0000001", "2025-03-01 08:00:00")])

    report, warehouse = _run(env)
    assert report.by_table == {"raw.order_lines": 5, "raw.customers": 1}
    assert not report.quarantined
    row = warehouse.query_arrow(
        "select order_id, quantity, ordered_at, _source_object from raw.order_lines "
        "where order_id = 'O2' order by line_number"
    ).to_pylist()
    assert [r["quantity"] for r in row] == [1, 2]
    assert row[0]["ordered_at"] == datetime(2025, 3, 1, 10, 0)
    assert row[0]["_source_object"].endswith("part-0001.jsonl.gz")
    warehouse.close()

    # second run: nothing new
    report, warehouse = _run(env)
    assert report.rows_loaded == 0 and report.objects_skipped == 2
    warehouse.close()

    # a new day, a re-uploaded object, an updated document
    objects.put("orders/dt=2025-03-02/part-0000.parquet", _parquet(_lines("O3", 1, "2025-03-02")))
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 4)))
    db.customers.replace_one(
        {"_id": "C0000001"}, _customer("C0000001", "2025-03-02 09:00:00", loyalty_tier="gold")
    )
    report, warehouse = _run(env)
    assert report.by_table == {"raw.order_lines": 5, "raw.customers": 1}
    counts = dict(
        (r["order_id"], r["n"])
        for r in warehouse.query_arrow(
            "select order_id, count(*) as n from raw.order_lines group by order_id"
        ).to_pylist()
    )
    assert counts == {"O1": 4, "O2": 2, "O3": 1}
    tiers = warehouse.query_arrow(
        "select loyalty_tier, marketing_opt_in from raw.customers order by updated_at"
    ).to_pylist()
    assert tiers == [
        {"loyalty_tier": "bronze", "marketing_opt_in": True},
        {"loyalty_tier": "gold", "marketing_opt_in": True},
    ]
    warehouse.close()


def test_bad_input_is_quarantined_and_good_rows_load(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    db = runtime.open_mongo(env)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", b"PAR1 this is not parquet")
    objects.put(
        "orders/dt=2025-03-01/part-0001.jsonl.gz",
        _jsonl_gz(_lines("O2", 2), extra_lines=['{"order_id": "O9", "quantity": ', "not json"]),
    )
    db.customers.insert_many(
        [
            _customer("C0000001", "2025-03-01 08:00:00"),
            _customer("C0000002", "2025-03-01 08:30:00", marketing_opt_in="yes please"),
        ]
    )
    report, warehouse = _run(env)
    assert report.by_table == {"raw.order_lines": 2, "raw.customers": 1}
    errors = warehouse.query_arrow(
        "select object_key, error from raw._quarantine order by object_key"
    ).to_pylist()
    assert len(errors) == 4, errors
    assert "Parquet" in errors[-1]["error"] or "Parquet" in " ".join(e["error"] for e in errors)
    assert any("marketing_opt_in" in e["error"] for e in errors)
    assert "QUARANTINED 4" in report.summary()
    warehouse.close()
    report, warehouse = _run(env)
    assert report.rows_loaded == 0 and not report.quarantined  # not retried until it changes
    warehouse.close()


def test_a_new_column_in_an_export_becomes_a_raw_column(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 2)))
    with_gift = [dict(r, gift_wrap=True) for r in _lines("O2", 1)]
    schema = ORDER_LINE_SCHEMA.append(pa.field("gift_wrap", pa.bool_()))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(with_gift, schema=schema), sink)
    objects.put("orders/dt=2025-03-02/part-0000.parquet", sink.getvalue())
    report, warehouse = _run(env)
    assert report.by_table["raw.order_lines"] == 3
    rows = warehouse.query_arrow(
        "select order_id, gift_wrap from raw.order_lines order by order_id, line_number"
    ).to_pylist()
    assert rows == [
        {"order_id": "O1", "gift_wrap": None},
        {"order_id": "O1", "gift_wrap": None},
        {"order_id": "O2", "gift_wrap": True},
    ]
    warehouse.close()
