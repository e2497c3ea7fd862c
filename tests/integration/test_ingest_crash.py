"""Exactly once under crashes: `retailml ingest` is killed (SIGKILL) in the middle of a load,
rerun, and the warehouse compared with the source and with a clean run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailml import runtime
from retailml.config import Settings
from retailml.ingest import ingest_all
from retailml.ingest.s3_orders import ORDER_LINE_SCHEMA
from retailml.sources import local_services

OBJECTS = 6
ROWS_PER_OBJECT = 80_000
CUSTOMERS = 3_000


def _order_lines(part: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(part)
    orders = np.arange(rows, dtype=np.int64) // 3 + part * 1_000_000
    stamp = np.datetime64("2025-03-01T00:00:00", "us") + rng.integers(0, 86_400, rows).astype(
        "timedelta64[s]"
    )
    customers = pa.array([f"C{c:07d}" for c in rng.integers(1, CUSTOMERS, rows)])
    return pa.table(
        [
            pa.array([f"O{o:010d}" for o in orders]),
            pa.array(np.arange(rows, dtype=np.int64) % 3 + 1),
            customers,
            pa.array([f"P{p:05d}" for p in rng.integers(1, 200, rows)]),
            pa.array(rng.integers(-1, 5, rows)),
            pa.array(rng.random(rows) * 100),
            pa.array(np.zeros(rows)),
            pa.array(["EUR"] * rows),
            pa.array(rng.choice(["web", "app", "marketplace"], rows)),
            pa.array(stamp),
            pa.array(stamp + np.timedelta64(1, "D")),
        ],
        schema=ORDER_LINE_SCHEMA,
    )


def _populate(settings: Settings) -> dict[str, int]:
    """Order exports on S3 and customers in MongoDB; returns rows per object URI."""
    objects = runtime.open_object_store(settings, create_bucket=True)
    expected = {}
    for part in range(OBJECTS):
        key = f"orders/dt=2025-03-{part + 1:02d}/part-0000.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(_order_lines(part, ROWS_PER_OBJECT), sink, row_group_size=30_000)
        objects.put(key, sink.getvalue().to_pybytes())
        expected[f"s3://{settings.s3_bucket}/{key}"] = ROWS_PER_OBJECT
    runtime.open_mongo(settings).customers.insert_many(
        [
            {
                "_id": f"C{i:07d}",
                "email": f"c{i}@example.com",
                "loyalty_tier": "bronze",
                "signup_channel": "web",
                "marketing_opt_in": True,
                "created_at": datetime(2025, 1, 1),
                "updated_at": datetime(2025, 2, 1, 0, 0, i % 60),
            }
            for i in range(CUSTOMERS)
        ]
    )
    return expected


def _child_environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETAILML_")}
    env.update(settings.dbt_env())
    for name in (
        "data_dir",
        "s3_endpoint_url",
        "mongo_uri",
        "s3_bucket",
        "s3_prefix",
        "mongo_database",
    ):
        env[f"RETAILML_{name.upper()}"] = str(getattr(settings, name))
    env["AWS_ACCESS_KEY_ID"] = env["AWS_SECRET_ACCESS_KEY"] = local_services.LOCAL_AWS_KEY
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _ingest_process(settings: Settings, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "retailml.cli", "ingest"],
        env=_child_environment(settings),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_loaded_objects(process: subprocess.Popen[str], objects: int) -> list[str]:
    """Kill the process right after it reports ``objects`` committed S3 objects."""
    seen: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line.rstrip())
        if "loaded orders/" in line and sum("loaded orders/" in s for s in seen) >= objects:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    return seen


def _kill_inside_a_copy(process: subprocess.Popen[str], settings: Settings, skip: int) -> int:
    """Kill the process while a COPY into raw.order_lines has sent rows to PostgreSQL (after
    ``skip`` objects committed); return the rows that COPY had processed."""
    conninfo = runtime.open_warehouse(settings)._conninfo  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    with psycopg.connect(conninfo, autocommit=True) as con:
        while time.monotonic() < deadline:
            assert process.poll() is None, "ingest finished before it could be killed"
            committed = (
                con.execute("select count(*) from raw._load_ledger where source = 's3'").fetchone()[
                    0
                ]
                if _has_ledger(con)
                else 0
            )
            row = con.execute(
                "select max(p.tuples_processed) from pg_stat_progress_copy p "
                "join pg_class c on c.oid = p.relid where c.relname = 'order_lines' "
                "and p.datname = current_database()"
            ).fetchone()
            if committed >= skip and row[0]:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=60)
                return int(row[0])
            time.sleep(0.005)
    raise AssertionError("never saw a COPY into raw.order_lines in progress")


def _has_ledger(con: psycopg.Connection) -> bool:
    return bool(con.execute("select to_regclass('raw._load_ledger') is not null").fetchone()[0])


def _state(settings: Settings) -> dict[str, object]:
    """Rows per source object, ledger agreement and content checksums of the warehouse."""
    warehouse = runtime.open_warehouse(settings)
    try:
        per_object = {
            r["_source_object"]: r["n"]
            for r in warehouse.query_arrow(
                "select ledger.object_key as _source_object, count(*) as n "
                "from raw.order_lines as lines left join raw._load_ledger as ledger "
                "on ledger.load_id = lines._load_id group by ledger.object_key"
            ).to_pylist()
        }
        ledger = {
            r["object_key"]: r["row_count"]
            for r in warehouse.query_arrow(
                "select object_key, row_count from raw._load_ledger "
                "where source = 's3' and status = 'loaded'"
            ).to_pylist()
        }
        data = warehouse.query_arrow(
            "select order_id, line_number, customer_id, product_id, quantity, unit_price, "
            "discount_amount, currency, channel, ordered_at, exported_at, "
            "ledger.object_key as _source_object from raw.order_lines as lines "
            "left join raw._load_ledger as ledger on ledger.load_id = lines._load_id "
            "order by _source_object, order_id, line_number"
        )
        customers = warehouse.query_arrow(
            "select _id, updated_at, email from raw.customers order by _id, updated_at"
        )
        return {
            "per_object": per_object,
            "ledger": ledger,
            "lines_sha256": _sha256(data),
            "customers": customers.num_rows,
            "customers_sha256": _sha256(customers),
        }
    finally:
        warehouse.close()


def _sha256(table: pa.Table) -> str:
    """Checksum of a table's content (one batch, Arrow IPC bytes)."""
    sink = pa.BufferOutputStream()
    table = table.combine_chunks()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "postgres":
        return request.getfixturevalue("pg_settings")
    return settings


@pytest.mark.slow
def test_killed_mid_load_then_rerun_equals_the_source_and_a_clean_run(
    env: Settings, tmp_path: Path, postgres_server: dict[str, object]
) -> None:
    expected = _populate(env)

    # 1. kill the real CLI process in the middle of a load, twice
    for attempt in range(2):
        process = _ingest_process(env, tmp_path)
        if env.warehouse == "postgres":
            in_flight = _kill_inside_a_copy(process, env, skip=2 * attempt + 1)
            assert 0 < in_flight < OBJECTS * ROWS_PER_OBJECT  # rows of a group, uncommitted
        else:
            log = _kill_after_loaded_objects(process, 2 - attempt)
            assert process.returncode == -signal.SIGKILL, log
        partial = _state(env)
        # nothing half-loaded: every row belongs to an object the ledger says is loaded, in
        # the ledger's count; the killed object left nothing
        assert partial["per_object"] == partial["ledger"]
        assert 0 < len(partial["ledger"]) < OBJECTS

    # 2. rerun to completion
    process = _ingest_process(env, tmp_path)
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors
    recovered = _state(env)

    # 3. nothing lost, nothing doubled, compared with the source ...
    assert recovered["per_object"] == expected
    assert recovered["ledger"] == expected
    assert recovered["customers"] == CUSTOMERS

    # ... and with a clean, uninterrupted run into a fresh warehouse
    with _clean_settings(env, tmp_path, postgres_server) as clean:
        warehouse = runtime.open_warehouse(clean)
        ingest_all(
            warehouse,
            runtime.open_object_store(clean),
            runtime.open_mongo(clean),
            prefix=clean.s3_prefix,
        )
        warehouse.close()
        reference = _state(clean)
    assert recovered == reference

    # 4. and a further run changes nothing
    process = _ingest_process(env, tmp_path)
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors
    assert _state(env) == recovered


@contextmanager
def _clean_settings(
    settings: Settings, tmp_path: Path, postgres_server: dict[str, object]
) -> Iterator[Settings]:
    """The same sources with a fresh, empty warehouse (a new DuckDB file or database)."""
    if settings.warehouse == "duckdb":
        yield settings.model_copy(update={"duckdb_path": tmp_path / "clean.duckdb"})
        return
    name = f"retailml_clean_{uuid.uuid4().hex[:10]}"
    conn = {k: postgres_server[k] for k in ("host", "port", "user")}
    with psycopg.connect(**conn, dbname="postgres", autocommit=True) as con:  # type: ignore[arg-type]
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield settings.model_copy(update={"pg_database": name})
    finally:
        with psycopg.connect(**conn, dbname="postgres", autocommit=True) as con:  # type: ignore[arg-type]
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
