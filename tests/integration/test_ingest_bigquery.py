"""The BigQuery loader (Parquet load jobs, deferred multi-statement transactions) against a
fake BigQuery client.

There is no BigQuery emulator, so this is the one place a fake stands in: ``FakeBigQuery``
implements the handful of google-cloud-bigquery client calls the warehouse makes (datasets,
tables, schema updates, Parquet load jobs, queries with named parameters, multi-statement
transactions) over an in-memory DuckDB, and records every job. The sources are real (the
local S3 and MongoDB servers); the loader code under test is the production code.
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.api_core.exceptions import NotFound
from google.cloud import bigquery

from retailml import runtime
from retailml.config import Settings
from retailml.ingest import backfill_all, ingest_all
from retailml.ingest.s3_orders import ORDER_LINE_SCHEMA
from retailml.warehouse.bigquery import BigQueryWarehouse, to_bigquery_sql

_TO_DUCKDB = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "INTEGER": "BIGINT",
    "FLOAT64": "DOUBLE",
    "FLOAT": "DOUBLE",
    "BOOL": "BOOLEAN",
    "BOOLEAN": "BOOLEAN",
    "DATETIME": "TIMESTAMP",
    "TIMESTAMP": "TIMESTAMPTZ",
    "DATE": "DATE",
    "JSON": "JSON",
    "BYTES": "BLOB",
}
_FROM_DUCKDB = {
    "VARCHAR": "STRING",
    "BIGINT": "INT64",
    "DOUBLE": "FLOAT64",
    "BOOLEAN": "BOOL",
    "TIMESTAMP": "DATETIME",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    "DATE": "DATE",
    "JSON": "JSON",
    "BLOB": "BYTES",
}


def _quoted(path: str) -> str:
    """A backticked BigQuery path as a quoted DuckDB name (the project dropped)."""
    return ".".join(f'"{part}"' for part in path.split(".")[-2:])


class _Job:
    def __init__(self, result: pa.Table | None = None) -> None:
        self._result = result

    def result(self, page_size: int | None = None) -> _Job:
        return self

    def to_arrow(self, create_bqstorage_client: bool = True) -> pa.Table:
        assert self._result is not None
        return self._result

    def to_arrow_iterable(self, bqstorage_client: Any = None) -> Any:
        return iter(self.to_arrow().to_batches())


class FakeBigQuery:
    """The google-cloud-bigquery ``Client`` calls BigQueryWarehouse makes, over DuckDB."""

    project = "fake-project"

    def __init__(self) -> None:
        self.db = duckdb.connect(":memory:")
        self.db.execute("SET TimeZone = 'UTC'")
        self.queries: list[str] = []
        self.loads: list[tuple[str, str]] = []  # (destination, source format)
        self.fail_next_script = False

    # names: "project.dataset.table" -> "dataset"."table"
    def _name(self, table_id: str) -> str:
        parts = table_id.split(".")
        return f'"{parts[-2]}"."{parts[-1]}"'

    def create_dataset(self, dataset: str, exists_ok: bool = False) -> None:
        self.db.execute(f'CREATE SCHEMA IF NOT EXISTS "{dataset.split(".")[-1]}"')

    def create_table(self, table: bigquery.Table, exists_ok: bool = False) -> None:
        cols = ", ".join(f'"{f.name}" {_TO_DUCKDB[f.field_type]}' for f in table.schema)
        name = self._name(f"{table.project}.{table.dataset_id}.{table.table_id}")
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")

    def get_table(self, table_id: str) -> bigquery.Table:
        dataset, name = table_id.split(".")[-2:]
        rows = self.db.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = ? and table_name = ? order by ordinal_position",
            [dataset, name],
        ).fetchall()
        if not rows:
            raise NotFound(f"table {table_id}")
        table = bigquery.Table(
            table_id,
            schema=[bigquery.SchemaField(n, _FROM_DUCKDB.get(t, "STRING")) for n, t in rows],
        )
        return table

    def update_table(self, table: bigquery.Table, fields: list[str]) -> bigquery.Table:
        assert fields == ["schema"]
        table_id = f"{table.project}.{table.dataset_id}.{table.table_id}"
        current = {f.name for f in self.get_table(table_id).schema}
        for f in table.schema:
            if f.name not in current:
                self.db.execute(
                    f'ALTER TABLE {self._name(table_id)} ADD COLUMN "{f.name}" '
                    f"{_TO_DUCKDB[f.field_type]}"
                )
        return table

    def delete_table(self, table_id: str, not_found_ok: bool = False) -> None:
        self.db.execute(f"DROP TABLE IF EXISTS {self._name(table_id)}")

    def load_table_from_file(
        self, file: Any, destination: str, job_config: bigquery.LoadJobConfig, location: Any = None
    ) -> _Job:
        assert job_config.source_format == bigquery.SourceFormat.PARQUET
        data = pq.read_table(io.BytesIO(file.read()))
        self.loads.append((destination, job_config.source_format))
        self.db.register("__load", data)
        try:
            self.db.execute(f"INSERT INTO {self._name(destination)} BY NAME SELECT * FROM __load")
        finally:
            self.db.unregister("__load")
        return _Job()

    def query(
        self, sql: str, job_config: bigquery.QueryJobConfig | None = None, location: Any = None
    ) -> _Job:
        self.queries.append(sql)
        params = {p.name: p.value for p in (job_config.query_parameters if job_config else [])}
        text = re.sub(r"`([^`]+)`", lambda m: _quoted(m.group(1)), sql)
        text = text.replace("PARSE_JSON(", "json(")
        text = re.sub(r"@(p\d+)", r"$\1", text)
        if text.startswith("BEGIN TRANSACTION;"):
            return self._script(text, params)
        used = {k: v for k, v in params.items() if f"${k}" in text}
        relation = self.db.sql(text, params=used or None)
        return _Job(pa.table({}) if relation is None else relation.to_arrow_table())

    def _script(self, text: str, params: dict[str, Any]) -> _Job:
        statements = [s.strip() for s in text.split(";\n") if s.strip()]
        assert statements[0] == "BEGIN TRANSACTION" and statements[-1] == "COMMIT TRANSACTION;"
        self.db.execute("BEGIN TRANSACTION")
        try:
            for statement in statements[1:-1]:
                ledger = statement.startswith('INSERT INTO "raw"."_load_ledger"')
                if self.fail_next_script and ledger:
                    raise RuntimeError("simulated failure inside the transaction")
                used = {k: v for k, v in params.items() if f"${k}" in statement}
                self.db.execute(statement, used) if used else self.db.execute(statement)
        except BaseException:
            self.db.execute("ROLLBACK")
            self.fail_next_script = False
            raise
        self.db.execute("COMMIT")
        return _Job()

    def close(self) -> None:
        pass


def _lines(order: str, n: int, day: str = "2025-03-01") -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "order_id": order,
                "line_number": i + 1,
                "customer_id": "C0000001",
                "product_id": f"P{i:05d}",
                "quantity": i + 1,
                "unit_price": 9.5,
                "discount_amount": 0.0,
                "currency": "EUR",
                "channel": "web",
                "ordered_at": datetime.fromisoformat(f"{day} 10:00:00"),
                "exported_at": datetime.fromisoformat(f"{day} 23:00:00"),
            }
            for i in range(n)
        ],
        schema=ORDER_LINE_SCHEMA,
    )


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.fixture
def fake() -> FakeBigQuery:
    return FakeBigQuery()


def test_sql_translation() -> None:
    sql, values = to_bigquery_sql('delete from "raw"."t" where a = ? and b like ?', [1, "x%"])
    assert sql == "delete from `raw`.`t` where a = @p0 and b like @p1" and values == [1, "x%"]


def test_s3_and_mongo_into_bigquery_through_load_jobs(
    settings: Settings, fake: FakeBigQuery
) -> None:
    objects = runtime.open_object_store(settings, create_bucket=True)
    db = runtime.open_mongo(settings)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 3)))
    objects.put("orders/dt=2025-03-02/part-0000.parquet", b"PAR1 broken")
    db.customers.insert_one(
        {
            "_id": "C0000001",
            "email": "a@example.com",
            "name": {"first": "Ada"},
            "loyalty_tier": "gold",
            "signup_channel": "web",
            "marketing_opt_in": True,
            "created_at": datetime(2025, 1, 1),
            "updated_at": datetime(2025, 3, 1, 8),
        }
    )
    warehouse = BigQueryWarehouse(fake)
    report = ingest_all(warehouse, objects, db, prefix="orders/")
    assert report.by_table == {"raw.order_lines": 3, "raw.customers": 1}
    assert len(report.quarantined) == 1
    # every append went through a Parquet load job into a staging table, then one transaction
    assert fake.loads and all(fmt == "PARQUET" for _, fmt in fake.loads)
    assert all("_retailml_staging" in destination for destination, _ in fake.loads)
    scripts = [q for q in fake.queries if q.startswith("BEGIN TRANSACTION;")]
    assert len(scripts) == 2  # one per group of S3 objects, one per Mongo chunk
    assert all("INSERT INTO `raw._load_ledger`" in s for s in scripts)
    statuses = warehouse.query_arrow(
        "select object_key, status, load_id from raw._load_ledger where source = 's3' "
        "order by object_key"
    ).to_pylist()
    assert [r["status"] for r in statuses] == ["loaded", "quarantined"]
    assert warehouse.scalar("select count(distinct _load_id) from raw.order_lines") == 1
    assert warehouse.scalar("select max(_load_id) from raw.order_lines") == statuses[0]["load_id"]
    rows = warehouse.query_arrow(
        "select order_id, quantity, ordered_at from raw.order_lines order by quantity"
    ).to_pylist()
    assert [r["quantity"] for r in rows] == [1, 2, 3]
    assert rows[0]["ordered_at"] == datetime(2025, 3, 1, 10)
    assert warehouse.scalar("select count(*) from raw._quarantine") == 1
    document = warehouse.scalar("select _document from raw.customers")  # a JSON column
    assert json.loads(document)["name"] == {"first": "Ada"}
    # staging tables are dropped once their rows moved
    staged = fake.db.execute(
        "select count(*) from information_schema.tables where table_schema = '_retailml_staging'"
    ).fetchone()[0]
    assert staged == 0

    again = ingest_all(warehouse, objects, db, prefix="orders/")
    assert again.rows_loaded == 0 and again.objects_skipped == 2

    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 5)))
    replaced = ingest_all(warehouse, objects, db, prefix="orders/")
    assert replaced.rows_loaded == 5 and replaced.rows_replaced == 3
    assert warehouse.scalar("select count(*) from raw.order_lines") == 5

    backfill = backfill_all(
        warehouse,
        objects,
        db,
        prefix="orders/",
        start=datetime(2025, 3, 1).date(),
        end=datetime(2025, 3, 2).date(),
    )
    assert backfill.by_table["raw.order_lines"] == 5 and len(backfill.quarantined) == 1
    assert warehouse.scalar("select count(*) from raw.order_lines") == 5
    assert warehouse.scalar("select count(*) from raw.customers") == 1


def test_a_failed_transaction_leaves_nothing(settings: Settings, fake: FakeBigQuery) -> None:
    objects = runtime.open_object_store(settings, create_bucket=True)
    objects.put("orders/dt=2025-03-01/part-0000.parquet", _parquet(_lines("O1", 3)))
    warehouse = BigQueryWarehouse(fake)
    fake.fail_next_script = True
    from retailml.ingest.ledger import new_batch_id
    from retailml.ingest.s3_orders import ingest_s3_orders

    with pytest.raises(RuntimeError, match="simulated failure"):
        ingest_s3_orders(warehouse, objects, prefix="orders/", batch_id=new_batch_id())
    assert warehouse.scalar("select count(*) from raw.order_lines") == 0
    assert warehouse.scalar("select count(*) from raw._load_ledger") == 0
    report = ingest_s3_orders(warehouse, objects, prefix="orders/", batch_id=new_batch_id())
    assert report.rows_loaded == 3
    assert warehouse.scalar("select count(*) from raw.order_lines") == 3
