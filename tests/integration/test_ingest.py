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


# every raw order line with the lineage its ledger row holds (raw rows carry _load_id only)
LINEAGE = (
    "(select lines.*, ledger.batch_id as _batch_id, ledger.object_key as _source_object, "
    "ledger.object_version as _source_etag from raw.order_lines as lines "
    "join raw._load_ledger as ledger on ledger.load_id = lines._load_id) as lineage"
)


def _assert_every_row_has_its_ledger_row(warehouse) -> None:
    for table in ("raw.order_lines", "raw.customers", "raw.products"):
        if not warehouse.table_exists(table):
            continue
        orphans = warehouse.scalar(
            f"select count(*) from {table} as r where r._extracted_at is null or not exists "
            "(select 1 from raw._load_ledger as l where l.load_id = r._load_id "
            "and l.target_table = ? and l.status in ('loaded', 'backfill'))",
            [table],
        )
        assert orphans == 0, f"{orphans} rows of {table} lead to no ledger row"


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
        f"select order_id, quantity, ordered_at, _source_object, _source_etag, _batch_id "
        f"from {LINEAGE} where order_id = 'O2' order by line_number"
    ).to_pylist()
    assert [r["quantity"] for r in row] == [1, 2]
    assert row[0]["ordered_at"] == datetime(2025, 3, 1, 10, 0)
    assert row[0]["_source_object"].endswith("part-0001.jsonl.gz")
    listed = {i.key: i.etag for i in objects.list("orders/")}
    assert row[0]["_source_etag"] == listed["orders/dt=2025-03-01/part-0001.jsonl.gz"]
    assert row[0]["_batch_id"] == report.batch_id
    _assert_every_row_has_its_ledger_row(warehouse)
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
    _assert_every_row_has_its_ledger_row(warehouse)
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


# -- formats, pagination, bad input, drift, backfill (issue 3) -------------------------------


def _csv(rows: list[dict[str, object]], extra_lines: list[str] = ()) -> bytes:
    header = ",".join(ORDER_LINE_SCHEMA.names)
    lines = [
        ",".join(
            "" if r[c] is None else str(r[c]).replace("T", " ") for c in ORDER_LINE_SCHEMA.names
        )
        for r in rows
    ]
    return ("\n".join([header, *lines, *extra_lines]) + "\n").encode()


def _fingerprint(warehouse, table: str = LINEAGE) -> tuple[int, str]:
    """Row count and a content checksum of the data columns (order-independent)."""
    import hashlib

    data = warehouse.query_arrow(
        f"select order_id, line_number, customer_id, product_id, quantity, unit_price, "
        f"discount_amount, currency, channel, ordered_at, exported_at, _source_object "
        f"from {table} order by _source_object, order_id, line_number"
    )
    return data.num_rows, hashlib.sha256(repr(data.to_pylist()).encode()).hexdigest()


def test_csv_objects_load_and_a_broken_row_is_quarantined(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    objects.put("orders/dt=2025-03-01/part-0000.csv", _csv(_lines("O1", 3), ["O9,1,C1"]))
    objects.put("orders/dt=2025-03-02/part-0000.csv.gz", gzip.compress(_csv(_lines("O2", 2))))
    report, warehouse = _run(env)
    assert report.by_table["raw.order_lines"] == 5
    rows = warehouse.query_arrow(
        "select order_id, quantity, ordered_at from raw.order_lines order by order_id, quantity"
    ).to_pylist()
    assert [(r["order_id"], r["quantity"]) for r in rows] == [
        ("O1", 1),
        ("O1", 2),
        ("O1", 3),
        ("O2", 1),
        ("O2", 2),
    ]
    assert rows[0]["ordered_at"] == datetime(2025, 3, 1, 10, 0)
    bad = warehouse.query_arrow(
        "select batch_id, source, object_key, record, error from raw._quarantine"
    ).to_pylist()
    assert len(bad) == 1
    assert bad[0]["batch_id"] == report.batch_id and bad[0]["source"] == "s3"
    assert bad[0]["object_key"].startswith(f"s3://{env.s3_bucket}/orders/dt=2025-03-01/")
    assert bad[0]["record"] == "O9,1,C1" and "3 fields" in bad[0]["error"]
    assert "QUARANTINED 1" in report.summary()
    warehouse.close()


def test_listing_follows_pages(env: Settings) -> None:
    store = runtime.open_object_store(env, create_bucket=True)
    for day in range(1, 26):
        store.put(f"orders/dt=2025-03-{day:02d}/part-0000.parquet", _parquet(_lines(f"O{day}", 2)))
    pages = []
    store._client.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda **kwargs: pages.append(kwargs["parsed"]["KeyCount"])
    )
    store.page_size = 10
    warehouse = runtime.open_warehouse(env)
    report = ingest_all(warehouse, store, runtime.open_mongo(env), prefix=env.s3_prefix)
    assert pages == [10, 10, 5]
    assert report.objects_loaded == 25 + 2  # objects + the two Mongo collections
    assert warehouse.scalar(f"select count(distinct _source_object) from {LINEAGE}") == 25
    assert warehouse.scalar("select count(*) from raw.order_lines") == 50
    warehouse.close()


def _parquet_with_late_corruption(rows: int = 200_000) -> bytes:
    """A Parquet file whose footer reads fine but whose last row group is corrupt: it fails
    only after rows were already streamed into the warehouse."""
    lines = pa.Table.from_pylist(_lines("OX", 1), schema=ORDER_LINE_SCHEMA)
    table = pa.concat_tables([lines] * rows)
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=rows // 4, compression="none")
    data = bytearray(sink.getvalue())
    column = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(3).column(1)
    start = column.data_page_offset
    data[start : start + 64] = b"\xff" * 64
    return bytes(data)


def test_each_kind_of_bad_input_is_quarantined_and_queryable(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    db = runtime.open_mongo(env)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", b"PAR1 this is not parquet")
    objects.put("orders/dt=2025-03-01/part-0001.parquet", _parquet_with_late_corruption())
    objects.put(
        "orders/dt=2025-03-01/part-0002.jsonl.gz",
        _jsonl_gz(_lines("O2", 2), extra_lines=["not json"]),
    )
    objects.put("orders/dt=2025-03-01/part-0003.csv", _csv(_lines("O3", 2), ["O3,9"]))
    objects.put("orders/dt=2025-03-01/part-0004.parquet", _parquet(_lines("O4", 3)))
    db.customers.insert_many(
        [
            _customer("C0000001", "2025-03-01 08:00:00"),
            _customer("C0000002", "2025-03-01 08:30:00", created_at="last year"),
        ]
    )
    report, warehouse = _run(env)
    assert report.by_table == {"raw.order_lines": 7, "raw.customers": 1}
    # the object that failed midway left no rows behind: its COPY was rolled back
    assert warehouse.scalar("select count(*) from raw.order_lines where order_id = 'OX'") == 0
    rows = warehouse.query_arrow(
        "select batch_id, source, object_key, record, error from raw._quarantine "
        "order by object_key"
    ).to_pylist()
    assert {r["batch_id"] for r in rows} == {report.batch_id}
    by_key = {r["object_key"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_key) == {
        "part-0000.parquet",
        "part-0001.parquet",
        "part-0002.jsonl.gz#line=3",
        "part-0003.csv#row",
        "C0000002",
    }
    assert "corrupt Parquet" in by_key["part-0000.parquet"]["error"]
    assert by_key["part-0000.parquet"]["record"] is None  # a whole object
    assert "corrupt Parquet" in by_key["part-0001.parquet"]["error"]
    assert by_key["part-0002.jsonl.gz#line=3"]["record"] == "not json"
    assert by_key["part-0003.csv#row"]["record"] == "O3,9"
    assert "created_at" in by_key["C0000002"]["error"]
    assert by_key["C0000002"]["source"] == "mongo"
    statuses = dict(
        (r["object_key"].rsplit("/", 1)[-1], r["status"])
        for r in warehouse.query_arrow(
            "select object_key, status from raw._load_ledger where source = 's3'"
        ).to_pylist()
    )
    assert statuses["part-0000.parquet"] == statuses["part-0001.parquet"] == "quarantined"
    assert statuses["part-0004.parquet"] == "loaded"
    summary = report.summary()
    assert "QUARANTINED 5" in summary and "corrupt Parquet" in summary
    warehouse.close()


def test_schema_drift_never_stops_the_load(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 2)))
    # quantity became text ("2 pcs"), customer_id disappeared
    changed = pa.table(
        {
            "order_id": ["O2", "O2"],
            "line_number": [1, 2],
            "product_id": ["P1", "P2"],
            "quantity": ["2", "2 pcs"],
            "unit_price": [1.0, 2.0],
            "ordered_at": [datetime(2025, 3, 2, 9), datetime(2025, 3, 2, 9)],
        }
    )
    sink = io.BytesIO()
    pq.write_table(changed, sink)
    objects.put("orders/dt=2025-03-02/part-0000.parquet", sink.getvalue())
    report, warehouse = _run(env)
    assert report.by_table["raw.order_lines"] == 4 and not report.quarantined
    rows = warehouse.query_arrow(
        "select order_id, line_number, quantity, customer_id, _raw_text from raw.order_lines "
        "where order_id = 'O2' order by line_number"
    ).to_pylist()
    assert [(r["quantity"], r["customer_id"]) for r in rows] == [(2, None), (None, None)]
    assert rows[0]["_raw_text"] is None
    assert json.loads(rows[1]["_raw_text"]) == {"quantity": "2 pcs"}
    drift = warehouse.query_arrow(
        "select batch_id, object_key, column_name, change, rows_as_text "
        "from raw._schema_drift order by column_name, change"
    ).to_pylist()
    changes = {(d["column_name"], d["change"]): d for d in drift}
    assert changes[("quantity", "type")]["rows_as_text"] == 1
    assert ("customer_id", "missing") in changes and ("currency", "missing") in changes
    assert all(d["object_key"].endswith("dt=2025-03-02/part-0000.parquet") for d in drift)
    assert {d["batch_id"] for d in drift} == {report.batch_id}
    assert "SCHEMA DRIFT" in report.summary()
    warehouse.close()


def test_rerun_is_idempotent_with_identical_checksums(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    for day in range(1, 4):
        objects.put(f"orders/dt=2025-03-0{day}/part-0000.parquet", _parquet(_lines(f"A{day}", 4)))
        objects.put(f"orders/dt=2025-03-0{day}/part-0001.jsonl.gz", _jsonl_gz(_lines(f"B{day}", 3)))
    _, warehouse = _run(env)
    first = _fingerprint(warehouse)
    ledger = warehouse.query_arrow(
        "select object_key, row_count, checksum from raw._load_ledger where source = 's3' "
        "order by object_key"
    ).to_pylist()
    warehouse.close()
    assert first[0] == 21 and len(ledger) == 6
    assert all(r["checksum"] and len(r["checksum"]) == 64 for r in ledger)
    again, warehouse = _run(env)
    assert again.rows_loaded == 0 and again.objects_skipped == 6
    assert _fingerprint(warehouse) == first
    warehouse.close()


@pytest.mark.postgres
def test_parallel_workers_load_each_object_once(pg_settings: Settings) -> None:
    from retailml.ingest.ledger import new_batch_id
    from retailml.ingest.s3_orders import ingest_s3_orders

    objects = runtime.open_object_store(pg_settings, create_bucket=True)
    for day in range(1, 13):
        objects.put(
            f"orders/dt=2025-04-{day:02d}/part-0000.parquet", _parquet(_lines(f"D{day}", day))
        )
    # a new column in the middle: schema changes serialise across workers
    gift = [dict(r, gift_wrap=True) for r in _lines("G1", 2, "2025-04-06")]
    sink = io.BytesIO()
    pq.write_table(
        pa.Table.from_pylist(
            gift, schema=ORDER_LINE_SCHEMA.append(pa.field("gift_wrap", pa.bool_()))
        ),
        sink,
    )
    objects.put("orders/dt=2025-04-06/part-0001.parquet", sink.getvalue())
    warehouse = runtime.open_warehouse(pg_settings)
    report = ingest_s3_orders(
        warehouse, objects, prefix="orders/", batch_id=new_batch_id(), workers=3
    )
    assert report.objects_loaded == 13 and report.rows_loaded == sum(range(1, 13)) + 2
    counts = warehouse.query_arrow(
        f"select _source_object, count(*) as n, count(gift_wrap) as gifts from {LINEAGE} "
        "group by _source_object"
    ).to_pylist()
    assert len(counts) == 13
    _assert_every_row_has_its_ledger_row(warehouse)
    assert sum(r["gifts"] for r in counts) == 2
    assert warehouse.scalar("select count(*) from raw._load_ledger where source = 's3'") == 13
    warehouse.close()


def _backfill(settings: Settings, start: str, end: str, sources=("s3", "mongo")):
    from datetime import date

    from retailml.ingest import backfill_all

    warehouse = runtime.open_warehouse(settings)
    report = backfill_all(
        warehouse,
        runtime.open_object_store(settings),
        runtime.open_mongo(settings),
        prefix=settings.s3_prefix,
        start=date.fromisoformat(start),
        end=date.fromisoformat(end),
        sources=sources,
    )
    return report, warehouse


def test_backfill_replaces_exactly_what_the_range_loaded(env: Settings) -> None:
    objects = runtime.open_object_store(env, create_bucket=True)
    for day in (1, 2, 3, 4):
        objects.put(
            f"orders/dt=2025-03-0{day}/part-0000.parquet",
            _parquet(_lines(f"O{day}", 2, f"2025-03-0{day}")),
        )
    objects.put("orders/dt=2025-03-03/part-0001.parquet", _parquet(_lines("X3", 1, "2025-03-03")))
    report, warehouse = _run(env)
    outside_before = warehouse.query_arrow(
        f"select order_id, _batch_id, _load_id from {LINEAGE} where order_id in ('O1', 'O4') "
        "order by order_id, line_number"
    ).to_pylist()
    # simulate a bad earlier load: rows doubled for day 2 (what a backfill must repair)
    warehouse.execute(
        "insert into raw.order_lines select * from raw.order_lines where order_id = 'O2'"
    )
    warehouse.close()
    objects.delete("orders/dt=2025-03-03/part-0001.parquet")  # gone from the source
    objects.put("orders/dt=2025-03-03/part-0002.csv", _csv(_lines("N3", 2, "2025-03-03")))

    report, warehouse = _backfill(env, "2025-03-02", "2025-03-03", sources=("s3",))
    assert report.objects_loaded == 3 and report.objects_removed == 1
    counts = dict(
        (r["order_id"], r["n"])
        for r in warehouse.query_arrow(
            "select order_id, count(*) as n from raw.order_lines group by order_id"
        ).to_pylist()
    )
    assert counts == {"O1": 2, "O2": 2, "O3": 2, "N3": 2, "O4": 2}
    assert (
        warehouse.query_arrow(
            f"select order_id, _batch_id, _load_id from {LINEAGE} "
            "where order_id in ('O1', 'O4') order by order_id, line_number"
        ).to_pylist()
        == outside_before
    )
    batches = {
        r["order_id"]: r["_batch_id"]
        for r in warehouse.query_arrow(
            f"select distinct order_id, _batch_id from {LINEAGE}"
        ).to_pylist()
    }
    _assert_every_row_has_its_ledger_row(warehouse)
    assert batches["O2"] == batches["O3"] == batches["N3"] == report.batch_id
    removed = warehouse.query_arrow(
        "select object_key from raw._load_ledger where status = 'removed'"
    ).to_pylist()
    assert [r["object_key"].rsplit("/", 1)[-1] for r in removed] == ["part-0001.parquet"]
    warehouse.close()
    # the incremental run afterwards has nothing left to do
    again, warehouse = _run(env)
    assert again.rows_loaded == 0 and again.objects_skipped == 5
    warehouse.close()


def test_backfill_of_a_mongo_window(env: Settings) -> None:
    db = runtime.open_mongo(env)
    db.customers.insert_many(
        [
            _customer("C0000001", "2025-03-01 08:00:00"),
            _customer("C0000002", "2025-03-02 08:00:00"),
            _customer("C0000003", "2025-03-03 08:00:00"),
        ]
    )
    runtime.open_object_store(env, create_bucket=True)
    report, warehouse = _run(env)
    assert report.by_table == {"raw.customers": 3}
    # after the load: C1 changes (its old version can no longer be re-extracted), C4 is new
    # (past the watermark), and a bad load had doubled C2's row
    db.customers.replace_one(
        {"_id": "C0000001"}, _customer("C0000001", "2025-03-04 12:00:00", loyalty_tier="gold")
    )
    db.customers.insert_one(_customer("C0000004", "2025-03-03 09:00:00"))
    warehouse.execute(
        "insert into raw.customers select * from raw.customers where _id = 'C0000002'"
    )
    warehouse.close()

    report, warehouse = _backfill(env, "2025-03-01", "2025-03-03", sources=("mongo",))
    assert report.by_table == {"raw.customers": 2}
    rows = warehouse.query_arrow(
        "select _id, updated_at, _batch_id from raw.customers order by _id, updated_at"
    ).to_pylist()
    assert [(r["_id"], r["updated_at"].day) for r in rows] == [
        ("C0000001", 1),  # kept: Mongo no longer has this version
        ("C0000002", 2),  # the doubled row replaced by one
        ("C0000003", 3),
    ]
    assert rows[1]["_batch_id"] == rows[2]["_batch_id"] == report.batch_id
    assert rows[0]["_batch_id"] != report.batch_id
    _assert_every_row_has_its_ledger_row(warehouse)
    backfills = warehouse.scalar(
        "select count(*) from raw._load_ledger where status = 'backfill' and object_key like ?",
        ["mongo://%/customers"],
    )
    assert backfills == 1
    warehouse.close()
    # the incremental run still loads what is past the watermark (C1's new version, C4)
    report, warehouse = _run(env)
    assert report.by_table == {"raw.customers": 2}
    assert warehouse.scalar("select count(*) from raw.customers") == 5
    warehouse.close()


def test_backfill_command(env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from retailml import cli

    objects = runtime.open_object_store(env, create_bucket=True)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 2)))
    _run(env)[1].close()
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 5)))
    for name, value in env.dbt_env().items():
        monkeypatch.setenv(name, value)
    for name in ("data_dir", "s3_endpoint_url", "mongo_uri", "s3_bucket", "mongo_database"):
        monkeypatch.setenv(f"RETAILML_{name.upper()}", str(getattr(env, name)))
    assert cli.main(["backfill", "--start", "2025-03-01", "--end", "2025-03-01"]) == 0
    warehouse = runtime.open_warehouse(env)
    assert warehouse.scalar("select count(*) from raw.order_lines") == 5
    warehouse.close()
    assert cli.main(["backfill", "--start", "2025-03-02", "--end", "2025-03-01"]) != 0


def test_an_object_changed_after_listing_waits_for_the_next_run(env: Settings) -> None:
    from retailml.ingest.ledger import new_batch_id
    from retailml.ingest.s3_orders import ingest_s3_orders
    from retailml.sources.object_store import ObjectChangedError

    objects = runtime.open_object_store(env, create_bucket=True)
    key = "orders/dt=2025-03-01/part-0000.parquet"
    objects.put(key, _parquet(_lines("O1", 2)))
    listed = next(iter(objects.list("orders/")))
    objects.put(key, _parquet(_lines("O1", 3)))
    with pytest.raises(ObjectChangedError):
        objects.get(key, if_match=listed.etag)

    def reupload_after_listing(info) -> bool:  # the exporter rewrites it meanwhile
        objects.put(key, _parquet(_lines("O1", 4)))
        return True

    warehouse = runtime.open_warehouse(env)
    report = ingest_s3_orders(
        warehouse, objects, prefix="orders/", batch_id=new_batch_id(), keys=reupload_after_listing
    )
    assert report.rows_loaded == 0 and report.objects_loaded == 0
    assert warehouse.scalar("select count(*) from raw._load_ledger") == 0
    report = ingest_s3_orders(warehouse, objects, prefix="orders/", batch_id=new_batch_id())
    assert report.rows_loaded == 4
    etag = warehouse.scalar(f"select max(_source_etag) from {LINEAGE}")
    assert etag == next(iter(objects.list("orders/"))).etag
    warehouse.close()


def test_mongo_watermark_breaks_ties_on_id_across_chunks(env: Settings) -> None:
    from retailml.ingest.ledger import new_batch_id
    from retailml.ingest.mongo_docs import COLLECTIONS, ingest_collection

    customers = next(spec for spec in COLLECTIONS if spec.collection == "customers")
    db = runtime.open_mongo(env)
    same = "2025-03-01 08:00:00"  # one updated_at shared by every document
    db.customers.insert_many([_customer(f"C000000{i}", same) for i in (1, 2, 3, 4, 5)])
    warehouse = runtime.open_warehouse(env)

    def load() -> int:
        return ingest_collection(
            warehouse, db, customers, batch_id=new_batch_id(), chunk_size=2
        ).rows_loaded

    assert load() == 5  # three chunks; two watermarks fall inside the tie
    marks = warehouse.query_arrow(
        "select object_version from raw._load_ledger order by loaded_at, load_id"
    ).to_pylist()
    assert [json.loads(m["object_version"])["_id"] for m in marks] == [
        "C0000002",
        "C0000004",
        "C0000005",
    ]
    assert load() == 0
    db.customers.insert_one(_customer("C0000006", same))  # same instant, a later _id
    assert load() == 1
    ids = warehouse.query_arrow("select _id from raw.customers order by _id").to_pylist()
    assert [r["_id"] for r in ids] == [f"C000000{i}" for i in range(1, 7)]
    _assert_every_row_has_its_ledger_row(warehouse)
    warehouse.close()
