"""Measure S3 -> PostgreSQL ingestion against ``psql \\copy`` and dlt, in one run.

    .venv/bin/python benchmarks/ingest.py                  # >= 2,000,000 order lines
    .venv/bin/python benchmarks/ingest.py --rows 4000000   # same, twice the input (memory)

What it does:

1. starts an S3 server (moto's ThreadedMotoServer, in a process of its own, objects in
   memory) and simulates a business into it until at least ``--rows`` order lines exist,
   all as Parquet exports (``orders/dt=YYYY-MM-DD/part-NNNN.parquet``);
2. creates a scratch PostgreSQL database (dropped at the end) on the configured server
   (``RETAILML_PG_HOST``/``_PORT``/``_USER``/``_PASSWORD``, default 127.0.0.1:5432 postgres);
3. ours: ``retailml.ingest.s3_orders.ingest_s3_orders`` into ``raw.order_lines`` in a
   child process, timed end to end from listing the objects to the last commit;
4. (a) ``psql \\copy`` of the same rows from a local CSV file into an 11-column table (the
   server's own ingest rate for this data), and, as a reference printed apart, into a table
   shaped like ``raw.order_lines`` (the same rows plus the 3 columns the raw contract adds:
   ``_raw_text``, ``_load_id``, ``_extracted_at``);
5. (b) dlt (``dlt[postgres]``) loading the same objects, read from the same S3 server and
   yielded as Arrow tables, in its fastest documented configuration for Arrow/Parquet input
   on PostgreSQL: ``loader_file_format="parquet"``, loaded through ADBC
   (``adbc-driver-postgresql``) when installed, else ``"csv"`` (COPY); ``--dlt-formats``
   picks others.

Ours loads objects in groups of ``GROUP_BYTES`` per transaction and COPY, on
``LOAD_WORKERS`` connections at once (``retailml.ingest.s3_orders``); its process CPU time
while timed is printed too (the machine is shared: CPU per row does not depend on load).
Each contender runs in its own process; peak RSS is our loader process's. With
``--repeat N`` ours and ``psql \\copy`` alternate N times (each into an empty table) and the
medians are reported, which evens out load from other processes on the machine; dlt runs once
per format. The last line is ``key=value`` pairs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

LOCAL_KEY = "bench"
BUCKET = "bench-landing"
PREFIX = "orders/"
COPY_TABLE = "public.order_lines_copy"
LINEAGE_TABLE = "public.order_lines_copy_with_lineage"
ORDER_LINE_DDL = (
    "order_id text, line_number bigint, customer_id text, product_id text, quantity bigint, "
    "unit_price double precision, discount_amount double precision, currency text, "
    "channel text, ordered_at timestamp, exported_at timestamp"
)


# -- the S3 server (its own process: its CPU is not ours) -----------------------------------


def _serve_s3(port: int) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    while True:
        time.sleep(3600)


def _start_s3() -> tuple[multiprocessing.Process, str]:
    from retailml.sources import local_services

    port = local_services.free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_s3, args=(port,), daemon=True
    )
    process.start()
    deadline = time.monotonic() + 30
    while not local_services.port_open(port):
        if time.monotonic() > deadline or not process.is_alive():
            raise RuntimeError("the S3 server (moto) did not start")
        time.sleep(0.1)
    return process, f"http://127.0.0.1:{port}"


def _store(endpoint: str) -> Any:
    from retailml.sources.object_store import S3ObjectStore

    return S3ObjectStore.connect(
        BUCKET,
        endpoint_url=endpoint,
        region="eu-west-1",
        create_bucket=True,
        access_key=LOCAL_KEY,
        secret_key=LOCAL_KEY,
    )


class _DiscardDatabase(dict):
    """Mongo stand-in: the benchmark measures order lines only."""

    class _Collection:
        full_name = "discard"

        def insert_many(self, docs: list[Any], ordered: bool = True) -> None:
            return None

        def replace_one(self, selector: Any, doc: Any) -> Any:
            return type("Result", (), {"matched_count": 1})()

    def __missing__(self, name: str) -> Any:
        return self._Collection()


def _simulate(endpoint: str, rows: int, customers: int, work: Path) -> tuple[int, int]:
    """Simulate days into S3 until at least ``rows`` order lines exist."""
    from retailml.simulate.config import SimulationConfig
    from retailml.simulate.engine import simulate_days

    config = replace(
        SimulationConfig(),
        seed=7,
        initial_customers=customers,
        new_customers_per_day=0.003 * customers,
        json_share=0.0,  # every export Parquet
    )
    store = _store(endpoint)
    lines = objects = 0
    while lines < rows:
        per_day = max(1_000, lines // max(1, objects)) if objects else 15_000
        days = max(1, min(30, (rows - lines) // per_day + 1))
        summary = simulate_days(
            config,
            days,
            objects=store,
            db=_DiscardDatabase(),
            truth_dir=work / "truth",
            state_dir=work / "state",
        )
        lines += summary.order_lines
        objects += summary.objects_written
    return lines, objects


# -- PostgreSQL -----------------------------------------------------------------------------


def _pg() -> dict[str, Any]:
    return {
        "host": os.environ.get("RETAILML_PG_HOST", "127.0.0.1"),
        "port": int(os.environ.get("RETAILML_PG_PORT", "5432")),
        "user": os.environ.get("RETAILML_PG_USER", "postgres"),
        "password": os.environ.get("RETAILML_PG_PASSWORD", ""),
    }


def _conninfo(database: str) -> str:
    pg = _pg()
    parts = [f"host={pg['host']}", f"port={pg['port']}", f"user={pg['user']}"]
    if pg["password"]:
        parts.append(f"password={pg['password']}")
    return " ".join([*parts, f"dbname={database}"])


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(_conninfo("postgres"), autocommit=True) as con:
        con.execute(sql)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- contenders (each in a child process: ``--phase NAME``) ---------------------------------


def phase_ours(endpoint: str, database: str) -> dict[str, Any]:
    # imported before the clock starts, like the loader's own modules: pyarrow imports
    # pandas on first Schema.empty_table() (the empty ledger of the first run), ~0.6 s of
    # interpreter start-up, not of loading
    import pandas  # noqa: F401

    from retailml.ingest.ledger import new_batch_id
    from retailml.ingest.s3_orders import ingest_s3_orders
    from retailml.warehouse.postgres import PostgresWarehouse

    store = _store(endpoint)
    warehouse = PostgresWarehouse(_conninfo(database))
    warehouse.execute("drop schema if exists raw cascade")  # an earlier repeat's tables
    start, cpu = time.perf_counter(), time.process_time()
    report = ingest_s3_orders(warehouse, store, prefix=PREFIX, batch_id=new_batch_id())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    count = warehouse.scalar("select count(*) from raw.order_lines")
    warehouse.close()
    return {
        "rows": report.rows_loaded,
        "count": count,
        "seconds": seconds,
        "objects": report.objects_loaded,
        "cpu_seconds": cpu,  # the loader process's, while timed
        "peak_rss_mb": _peak_rss_mb(),
    }


def phase_dlt(endpoint: str, database: str, file_format: str) -> dict[str, Any]:
    import io

    import dlt
    import pyarrow.parquet as pq

    pg = _pg()
    store = _store(endpoint)

    @dlt.resource(name="order_lines", write_disposition="append")
    def order_lines() -> Any:
        for info in store.list(PREFIX):
            yield pq.read_table(io.BytesIO(store.get(info.key)))

    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{uuid.uuid4().hex[:8]}",
        pipelines_dir=tempfile.mkdtemp(prefix="retailml-dlt-"),
        destination=dlt.destinations.postgres(
            credentials=(
                f"postgresql://{pg['user']}:{pg['password']}@{pg['host']}:{pg['port']}/{database}"
            )
        ),
        dataset_name=f"dlt_{file_format}",
    )
    start = time.perf_counter()
    info = pipeline.run(order_lines(), loader_file_format=file_format)
    seconds = time.perf_counter() - start
    info.raise_on_failed_jobs()
    import psycopg

    with psycopg.connect(_conninfo(database)) as con:
        count = con.execute(f"select count(*) from dlt_{file_format}.order_lines").fetchone()[0]
    shutil.rmtree(pipeline.pipelines_dir, ignore_errors=True)
    return {"count": count, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def _child(phase: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_csv(endpoint: str, work: Path) -> Path:
    """The same rows as the S3 objects, in one local CSV file (baseline (a)'s input)."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    store = _store(endpoint)
    path = work / "order_lines.csv"
    first = next(iter(store.list(PREFIX))).key
    with pacsv.CSVWriter(
        path,
        pq.read_schema(io.BytesIO(store.get(first))),
        write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"),
    ) as writer:
        for info in store.list(PREFIX):
            writer.write_table(pq.read_table(io.BytesIO(store.get(info.key))))
    return path


def _psql(database: str, command: str) -> float:
    """Run one psql meta-command; return its wall time."""
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is not installed: it is baseline (a) of this benchmark")
    pg = _pg()
    env = {**os.environ, "PGPASSWORD": pg["password"]}
    start = time.perf_counter()
    subprocess.run(
        [
            psql,
            "-X",
            "-q",
            "-h",
            str(pg["host"]),
            "-p",
            str(pg["port"]),
            "-U",
            str(pg["user"]),
            "-d",
            database,
            "-c",
            command,
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - start


def _psql_copy(database: str, path: Path, table: str, ddl: str) -> dict[str, Any]:
    """Time ``psql \\copy`` of a CSV file into an empty table."""
    _run_sql(database, f"drop table if exists {table}")
    _run_sql(database, f"create table {table} {ddl}")
    seconds = _psql(database, f"\\copy {table} from '{path}' (format csv)")
    return {"count": _scalar(database, f"select count(*) from {table}"), "seconds": seconds}


def _run_sql(database: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(_conninfo(database), autocommit=True) as con:
        con.execute(sql)


def _scalar(database: str, sql: str) -> Any:
    import psycopg

    with psycopg.connect(_conninfo(database)) as con:
        return con.execute(sql).fetchone()[0]


def _dlt_formats(requested: str | None) -> list[str]:
    """dlt's file formats for Arrow input on PostgreSQL: Parquet loads through ADBC (binary
    COPY) when ``adbc-driver-postgresql`` is installed; CSV loads through COPY."""
    if requested:
        return [f for f in requested.split(",") if f]
    try:
        import adbc_driver_postgresql  # noqa: F401

        return ["parquet", "csv"]
    except ImportError:
        return ["csv"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="at least this many lines")
    parser.add_argument("--customers", type=int, default=200_000, help="size of the business")
    parser.add_argument("--dlt-formats", default=None, help="comma-separated (parquet,csv)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate ours/psql N times")
    parser.add_argument("--skip-dlt", action="store_true")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase == "ours":
        print(json.dumps(phase_ours(args.endpoint, args.database)))
        return
    if args.phase == "dlt":
        print(json.dumps(phase_dlt(args.endpoint, args.database, args.format)))
        return

    os.environ.setdefault("AWS_ACCESS_KEY_ID", LOCAL_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", LOCAL_KEY)
    database = f"retailml_ingest_bench_{uuid.uuid4().hex[:8]}"
    s3, endpoint = _start_s3()
    work = Path(tempfile.mkdtemp(prefix="retailml-bench-"))
    _admin(f'create database "{database}"')
    try:
        started = time.perf_counter()
        rows, objects = _simulate(endpoint, args.rows, args.customers, work)
        print(
            f"simulated {rows:,} order lines in {objects} Parquet objects on S3 (moto) "
            f"in {time.perf_counter() - started:.0f}s",
            flush=True,
        )
        csv_path = _write_csv(endpoint, work)
        lineage_path = work / "order_lines_with_lineage.csv"
        ours_runs, copy_runs, lineage_runs = [], [], []
        for repeat in range(args.repeat):
            ours = _child("ours", "--endpoint", endpoint, "--database", database)
            if ours["count"] != rows:
                raise RuntimeError(f"ours loaded {ours['count']} rows, the source has {rows}")
            ours_runs.append(ours)
            print(
                f"ours      {ours['seconds']:7.2f}s  {rows / ours['seconds']:10,.0f} rows/s  "
                f"(listed -> committed, {ours['objects']} objects, loader CPU "
                f"{1e6 * ours['cpu_seconds'] / rows:.2f} us/row, peak RSS "
                f"{ours['peak_rss_mb']:.0f} MB)",
                flush=True,
            )
            copy = _psql_copy(database, csv_path, COPY_TABLE, f"({ORDER_LINE_DDL})")
            if copy["count"] != rows:
                raise RuntimeError(f"psql \\copy loaded {copy['count']} rows, expected {rows}")
            copy_runs.append(copy)
            print(
                f"psql copy {copy['seconds']:7.2f}s  {rows / copy['seconds']:10,.0f} rows/s  "
                "(local CSV, 11-column table)",
                flush=True,
            )
            # reference: the same rows as they land in raw.order_lines (with the 3 columns
            # the raw contract requires and the 11-column baseline does not write)
            if repeat == 0:
                _psql(database, f"\\copy raw.order_lines to '{lineage_path}' (format csv)")
            lineage = _psql_copy(database, lineage_path, LINEAGE_TABLE, "(like raw.order_lines)")
            lineage_runs.append(lineage)
            print(
                f"psql copy {lineage['seconds']:7.2f}s  {rows / lineage['seconds']:10,.0f} "
                "rows/s  (reference: local CSV into a table shaped like raw.order_lines)",
                flush=True,
            )
        ours_rate = rows / statistics.median(r["seconds"] for r in ours_runs)
        copy_rate = rows / statistics.median(r["seconds"] for r in copy_runs)
        lineage_rate = rows / statistics.median(r["seconds"] for r in lineage_runs)
        peak_rss = max(r["peak_rss_mb"] for r in ours_runs)
        dlt_rate = float("nan")
        if not args.skip_dlt:
            import dlt

            for file_format in _dlt_formats(args.dlt_formats):
                result = _child(
                    "dlt", "--endpoint", endpoint, "--database", database, "--format", file_format
                )
                if result["count"] != rows:
                    raise RuntimeError(f"dlt loaded {result['count']} rows, expected {rows}")
                rate = rows / result["seconds"]
                print(
                    f"dlt {dlt.__version__} ({file_format}) {result['seconds']:7.2f}s  "
                    f"{rate:10,.0f} rows/s  (Arrow tables from the same S3 objects, peak RSS "
                    f"{result['peak_rss_mb']:.0f} MB)",
                    flush=True,
                )
                dlt_rate = rate if dlt_rate != dlt_rate else max(dlt_rate, rate)
    finally:
        _admin(f'drop database if exists "{database}" with (force)')
        s3.terminate()
        s3.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"reference: ours / psql \\copy into the raw table's shape = {ours_rate / lineage_rate:.2f}"
    )
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(
        f"rows={rows} ours_rows_per_s={ours_rate:.0f} copy_rows_per_s={copy_rate:.0f} "
        f"dlt_rows_per_s={dlt_rate:.0f} vs_copy={ours_rate / copy_rate:.2f} "
        f"vs_dlt={ours_rate / dlt_rate:.2f} peak_rss_mb={peak_rss:.0f}"
    )


if __name__ == "__main__":
    main()
