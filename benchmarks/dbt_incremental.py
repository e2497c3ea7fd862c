"""Time a full `dbt build` against the daily incremental `dbt build` after one new day lands,
on PostgreSQL and on DuckDB, for a simulated business of >= 10 million order lines.

    .venv/bin/python benchmarks/dbt_incremental.py                   # 2 years, >= 10M lines
    .venv/bin/python benchmarks/dbt_incremental.py --days 120 --customers 20000   # a quick look

How the data gets there: the project's simulator runs in process; its S3 objects go to a
folder and its MongoDB documents to memory. At this size the local S3/MongoDB servers and
`retailml ingest` would take hours (one request per Mongo update), so the benchmark loads
raw.order_lines / raw.customers / raw.products itself, in the layout ingest writes
(docs/ARCHITECTURE.md, "Raw tables"): the Parquet and JSON Lines exports are read by
DuckDB, the documents become rows with their JSON, and PostgreSQL gets the same rows by
COPY. The ledger and quarantine tables are not written (no model reads them).

Then, per warehouse: `dbt parse` (not timed), a timed full `dbt build` on empty core and
marts, one more simulated day loaded into raw, and a timed `dbt build` (the daily run).
Both builds run `dbt build --exclude-resource-type unit_test`, as a production daily run
should (unit tests belong to CI; they cost the same few seconds in either build). dbt runs
as a subprocess with the profiles in profiles/.

The last line is key=value pairs: order_lines= postgres_full_s= postgres_daily_s=
postgres_daily_over_full= duckdb_full_s= duckdb_daily_s= duckdb_daily_over_full=
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa

from retailml.simulate.config import SimulationConfig
from retailml.simulate.engine import simulate_days

REPO = Path(__file__).resolve().parent.parent
DBT = Path(sys.executable).parent / "dbt"
DBT_COMMAND = ("build", "--exclude-resource-type", "unit_test")

# raw.* as ingest creates them (docs/ARCHITECTURE.md; python/retailml/ingest)
ORDER_LINE_COLUMNS = {
    "order_id": "varchar",
    "line_number": "bigint",
    "customer_id": "varchar",
    "product_id": "varchar",
    "quantity": "bigint",
    "unit_price": "double",
    "discount_amount": "double",
    "currency": "varchar",
    "channel": "varchar",
    "ordered_at": "timestamp",
    "exported_at": "timestamp",
}
METADATA_COLUMNS = {
    "_batch_id": "varchar",
    "_source_object": "varchar",
    "_source_etag": "varchar",
    "_load_id": "bigint",  # what staging reads (the real loader writes only it and _extracted_at)
    "_extracted_at": "timestamptz",
}
DOCUMENT_FIELDS = {
    "customers": {
        "email": "varchar",
        "loyalty_tier": "varchar",
        "signup_channel": "varchar",
        "marketing_opt_in": "boolean",
        "created_at": "timestamp",
    },
    "products": {
        "name": "varchar",
        "category": "varchar",
        "price": "double",
        "currency": "varchar",
        "is_active": "boolean",
        "created_at": "timestamp",
    },
}
PG_TYPES = {
    "varchar": "text",
    "bigint": "bigint",
    "double": "double precision",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "boolean": "boolean",
    "json": "jsonb",
}


# -- where the simulator writes ----------------------------------------------------------


class FolderStore:
    """``ObjectStore.put`` into a folder; remembers the keys written since the last drain."""

    bucket = "bench"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.new_keys: list[str] = []

    def put(self, key: str, body: bytes) -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        self.new_keys.append(key)
        return str(len(body))

    def drain(self) -> list[str]:
        keys, self.new_keys = self.new_keys, []
        return keys


@dataclass
class _Matched:
    matched_count: int


@dataclass
class MemoryCollection:
    """The two pymongo calls the simulator makes, on a dict; remembers changed ids."""

    full_name: str
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

    def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> None:
        for doc in docs:
            self.docs[doc["_id"]] = doc
            self.changed.add(doc["_id"])

    def replace_one(self, selector: dict[str, Any], doc: dict[str, Any]) -> _Matched:
        key = selector["_id"]
        if key not in self.docs:
            return _Matched(0)
        self.docs[key] = doc
        self.changed.add(key)
        return _Matched(1)

    def drain(self) -> list[dict[str, Any]]:
        docs = [self.docs[key] for key in sorted(self.changed)]
        self.changed = set()
        return docs


class MemoryDatabase(dict):
    def __missing__(self, name: str) -> MemoryCollection:
        self[name] = MemoryCollection(f"bench.{name}")
        return self[name]


# -- loading raw.* -------------------------------------------------------------------------


def _document_table(
    collection: str, docs: list[dict[str, Any]], batch: str, now: datetime
) -> pa.Table:
    fields = DOCUMENT_FIELDS[collection]

    def naive(value: Any) -> Any:  # Mongo dates arrive as naive UTC in raw
        return value.replace(tzinfo=None) if isinstance(value, datetime) else value

    columns: dict[str, list[Any]] = {"_id": [d["_id"] for d in docs]}
    columns["updated_at"] = [naive(d["updated_at"]) for d in docs]
    for name in fields:
        columns[name] = [naive(d.get(name)) for d in docs]
    columns["_document"] = [
        json.dumps(
            d,
            sort_keys=True,
            default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v),
        )
        for d in docs
    ]
    columns["_batch_id"] = [batch] * len(docs)
    columns["_extracted_at"] = [now] * len(docs)
    return pa.table(columns)


def _raw_ddl(dialect: str) -> list[str]:
    def column_list(columns: dict[str, str]) -> str:
        types = PG_TYPES if dialect == "postgres" else {k: k for k in PG_TYPES}
        return ", ".join(f"{name} {types[kind]}" for name, kind in columns.items())

    statements = [
        "create schema if not exists raw",
        f"create table if not exists raw.order_lines ({column_list({**ORDER_LINE_COLUMNS, **METADATA_COLUMNS})})",
    ]
    for collection, fields in DOCUMENT_FIELDS.items():
        columns = {
            "_id": "varchar",
            "updated_at": "timestamp",
            **fields,
            "_document": "json",
            "_batch_id": "varchar",
            "_extracted_at": "timestamptz",
        }
        statements.append(f"create table if not exists raw.{collection} ({column_list(columns)})")
    return statements


def load_duckdb(
    path: Path, objects: Path, keys: list[str], documents: dict[str, list[dict[str, Any]]]
) -> int:
    """Append the new objects' lines and the changed documents to raw.* in DuckDB."""
    batch = f"bench-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    con = duckdb.connect(str(path))
    try:
        con.execute("set TimeZone = 'UTC'")
        for statement in _raw_ddl("duckdb"):
            con.execute(statement)
        before = con.execute("select count(*) from raw.order_lines").fetchone()[0]
        casts = ", ".join(
            f"cast({name} as {kind}) as {name}" for name, kind in ORDER_LINE_COLUMNS.items()
        )
        metadata = (
            f"'{batch}' as _batch_id, 's3://bench/' || {{key}} as _source_object, "
            f"md5({{key}}) as _source_etag, cast(hash('{batch}' || {{key}}) >> 1 as bigint) as _load_id, "
            f"cast('{now.isoformat()}' as timestamptz) as _extracted_at"
        )
        parquet = [str(objects / k) for k in keys if k.endswith(".parquet")]
        jsonl = [str(objects / k) for k in keys if k.endswith(".jsonl.gz")]
        prefix_len = len(str(objects)) + 2  # the key: the path below the folder
        key = f"substr(filename, {prefix_len})"
        if parquet:
            con.execute(
                f"insert into raw.order_lines select {casts}, {metadata.format(key=key)} "
                f"from read_parquet(?, filename = true)",
                [parquet],
            )
        if jsonl:
            json_columns = {
                name: ("varchar" if kind == "timestamp" else kind)
                for name, kind in ORDER_LINE_COLUMNS.items()
            }
            casts_json = ", ".join(
                f"strptime({name}, '%Y-%m-%d %H:%M:%S') as {name}"
                if kind == "timestamp"
                else f"cast({name} as {kind}) as {name}"
                for name, kind in ORDER_LINE_COLUMNS.items()
            )
            con.execute(
                f"insert into raw.order_lines select {casts_json}, {metadata.format(key=key)} "
                f"from read_json(?, format = 'newline_delimited', columns = {json_columns!r}, filename = true)",
                [jsonl],
            )
        for collection, docs in documents.items():
            if docs:
                rows = _document_table(collection, docs, batch, now)
                con.register("document_rows", rows)
                names = ", ".join(rows.column_names)
                con.execute(
                    f"insert into raw.{collection} ({names}) select {names} from document_rows"
                )
                con.unregister("document_rows")
        return con.execute("select count(*) from raw.order_lines").fetchone()[0] - before
    finally:
        con.close()


def copy_to_postgres(
    duck_path: Path, conninfo: str, since_batch_ids: set[str], workdir: Path
) -> None:
    """Copy the raw rows of DuckDB batches not yet in PostgreSQL, by COPY (CSV)."""
    duck = duckdb.connect(str(duck_path))
    try:
        duck.execute("set TimeZone = 'UTC'")
        with psycopg.connect(conninfo, autocommit=True) as pg:
            for statement in _raw_ddl("postgres"):
                pg.execute(statement)
            for table in ("order_lines", "customers", "products"):
                batches = [
                    r[0]
                    for r in duck.execute(f"select distinct _batch_id from raw.{table}").fetchall()
                ]
                todo = [b for b in batches if b not in since_batch_ids]
                if not todo:
                    continue
                csv_path = workdir / f"{table}.csv"
                batch_list = ", ".join(f"'{b}'" for b in todo)  # ids this script generated
                duck.execute(
                    f"copy (select * from raw.{table} where _batch_id in ({batch_list})) "
                    f"to '{csv_path}' (format csv, header false)"
                )
                with (
                    pg.cursor() as cur,
                    cur.copy(f"copy raw.{table} from stdin (format csv)") as copy,
                    open(csv_path, "rb") as fh,
                ):
                    while chunk := fh.read(1 << 22):
                        copy.write(chunk)
                csv_path.unlink()
            pg.execute("analyze raw.order_lines")
            pg.execute("analyze raw.customers")
            pg.execute("analyze raw.products")
    finally:
        duck.close()


# -- dbt -------------------------------------------------------------------------------------


def dbt(
    target: str, args: tuple[str, ...], env: dict[str, str], workdir: Path, label: str = ""
) -> float:
    """Run dbt as a subprocess; return the wall-clock seconds; fail loudly on an error.
    Keeps each timed run's run_results.json as run_results-<label>.json for a breakdown."""
    command = [
        str(DBT),
        *args,
        "--project-dir",
        str(REPO / "dbt_project"),
        "--profiles-dir",
        str(REPO / "profiles"),
        "--target",
        target,
        "--target-path",
        str(workdir / f"target-{target}"),
        "--log-path",
        str(workdir / f"logs-{target}"),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-6000:])
        raise SystemExit(f"dbt {' '.join(args)} failed on {target}")
    if label:
        results = workdir / f"target-{target}" / "run_results.json"
        shutil.copy(results, workdir / f"run_results-{target}-{label}.json")
    summary = [line for line in result.stdout.splitlines() if "Done. PASS=" in line]
    print(
        f"  {target}: dbt {' '.join(args[:1])} {elapsed:8.1f}s  {summary[-1].split('Done. ')[-1] if summary else ''}",
        flush=True,
    )
    return elapsed


# -- the benchmark -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=730, help="days of history (default 2 years)")
    parser.add_argument("--customers", type=int, default=220_000, help="initial customers")
    parser.add_argument(
        "--new-customers-per-day", type=float, default=None, help="default 0.25%% of --customers"
    )
    parser.add_argument("--products", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--start-date", type=date.fromisoformat, default=date(2024, 1, 1))
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary folder, removed after"
    )
    parser.add_argument("--pg-host", default=os.environ.get("RETAILML_PG_HOST", "127.0.0.1"))
    parser.add_argument("--pg-port", default=os.environ.get("RETAILML_PG_PORT", "5432"))
    parser.add_argument("--pg-user", default=os.environ.get("RETAILML_PG_USER", "postgres"))
    parser.add_argument("--warehouses", default="postgres,duckdb")
    parser.add_argument("--keep-postgres", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    warehouses = [w.strip() for w in args.warehouses.split(",") if w.strip()]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="retailml-bench-dbt-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pg_database = f"retailml_bench_{uuid.uuid4().hex[:8]}"
    print(f"work folder {workdir}, PostgreSQL database {pg_database}", flush=True)
    admin = f"host={args.pg_host} port={args.pg_port} user={args.pg_user} dbname=postgres"
    conninfo = f"host={args.pg_host} port={args.pg_port} user={args.pg_user} dbname={pg_database}"
    duck_path = workdir / "warehouse.duckdb"
    env = {
        **os.environ,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "RETAILML_DUCKDB_PATH": str(duck_path),
        "RETAILML_PG_HOST": args.pg_host,
        "RETAILML_PG_PORT": str(args.pg_port),
        "RETAILML_PG_USER": args.pg_user,
        "RETAILML_PG_DATABASE": pg_database,
    }
    per_day = (
        args.new_customers_per_day
        if args.new_customers_per_day is not None
        else 0.0025 * args.customers
    )
    config = replace(
        SimulationConfig(),
        seed=args.seed,
        start_date=args.start_date,
        initial_customers=args.customers,
        new_customers_per_day=per_day,
        n_products=args.products,
    )
    store, mongo = FolderStore(workdir / "s3"), MemoryDatabase()
    if "postgres" in warehouses:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'create database "{pg_database}"')
    try:
        # 1. history
        started = time.perf_counter()
        simulate_days(
            config,
            args.days,
            objects=store,
            db=mongo,
            truth_dir=workdir / "truth",
            state_dir=workdir / "state",
        )
        print(f"simulated {args.days} days in {time.perf_counter() - started:.0f}s", flush=True)
        started = time.perf_counter()
        order_lines = load_duckdb(
            duck_path, store.root, store.drain(), {c: mongo[c].drain() for c in DOCUMENT_FIELDS}
        )
        print(
            f"loaded {order_lines:,} order lines into DuckDB raw in {time.perf_counter() - started:.0f}s",
            flush=True,
        )
        if "postgres" in warehouses:
            started = time.perf_counter()
            copy_to_postgres(duck_path, conninfo, set(), workdir)
            print(f"copied raw into PostgreSQL in {time.perf_counter() - started:.0f}s", flush=True)

        # 2. full builds
        timings: dict[str, dict[str, float]] = {}
        for target in warehouses:
            dbt(target, ("parse",), env, workdir)
            timings[target] = {"full": dbt(target, DBT_COMMAND, env, workdir, "full")}

        # 3. one new day lands
        loaded = {
            r[0]
            for r in duckdb.connect(str(duck_path))
            .execute(
                "select distinct _batch_id from raw.order_lines union select distinct _batch_id from raw.customers "
                "union select distinct _batch_id from raw.products"
            )
            .fetchall()
        }
        simulate_days(
            config,
            1,
            objects=store,
            db=mongo,
            truth_dir=workdir / "truth",
            state_dir=workdir / "state",
        )
        new_lines = load_duckdb(
            duck_path, store.root, store.drain(), {c: mongo[c].drain() for c in DOCUMENT_FIELDS}
        )
        order_lines += new_lines
        print(f"one new day: {new_lines:,} order lines", flush=True)
        if "postgres" in warehouses:
            copy_to_postgres(duck_path, conninfo, loaded, workdir)

        # 4. daily builds
        for target in warehouses:
            timings[target]["daily"] = dbt(target, DBT_COMMAND, env, workdir, "daily")
    finally:
        if "postgres" in warehouses and not args.keep_postgres:
            with psycopg.connect(admin, autocommit=True) as con:
                con.execute(f'drop database if exists "{pg_database}" with (force)')
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'warehouse':<10} {'full build s':>13} {'daily build s':>14} {'daily / full':>13}")
    for target in warehouses:
        t = timings[target]
        print(
            f"{target:<10} {t['full']:>13.1f} {t['daily']:>14.1f} {t['daily'] / t['full']:>13.3f}"
        )
    figures = [f"order_lines={order_lines}"]
    for target in ("postgres", "duckdb"):
        t = timings.get(target)
        if t:
            figures += [
                f"{target}_full_s={t['full']:.1f}",
                f"{target}_daily_s={t['daily']:.1f}",
                f"{target}_daily_over_full={t['daily'] / t['full']:.3f}",
            ]
        else:
            figures += [f"{target}_full_s=", f"{target}_daily_s=", f"{target}_daily_over_full="]
    print(" ".join(figures))


if __name__ == "__main__":
    main()
