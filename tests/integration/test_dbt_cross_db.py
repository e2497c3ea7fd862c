"""The dbt project on DuckDB and PostgreSQL from the same simulated business.

One module-scoped build: a business is simulated into the local S3 and MongoDB servers,
ingested into both warehouses, built (`dbt build`, unit tests included), then simulated
further (new days, customer and product changes), ingested and built again incrementally,
so the snapshots hold several versions and the facts an incremental history. The tests
compare the warehouses row for row, an incremental history with a full refresh, check the
SCD2 point-in-time join on real data, and run `dbt source freshness` and `dbt docs generate`.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from retailml import pipeline
from retailml.config import Settings
from retailml.sources import local_services
from retailml.transforms.dbt import DbtRunSummary, run_dbt

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BUSINESS = pipeline.SimulateOptions(
    days=150, seed=11, initial_customers=300, new_customers_per_day=2.0, n_products=40
)
LATER_DAYS = 21

# Every table dbt builds, compared across warehouses and against a full refresh. Snapshots
# are left out (their dbt_scd_id hashes the text of a timestamp, which differs by
# warehouse); the dimensions built from them are compared instead.
TABLES = (
    "core.dim_customers",
    "core.dim_products",
    "core.dim_date",
    "core.fct_order_lines",
    "core.fct_orders",
    "intermediate.int_customer_orders_monthly",
    "intermediate.int_customer_categories_daily",
    "intermediate.int_churn_training",
    "marts.mart_daily_sales",
    "marts.mart_customer_cohorts",
    "marts.mart_customer_lifetime_value",
    "marts.ml_churn_training",
    "marts.ml_customer_features",
    "marts.ml_demand_daily",
)
# When a dbt run wrote the row: metadata that differs between runs by design.
RUN_COLUMNS = frozenset({"transformed_at"})
# When ingest extracted the row: differs between the two warehouses' ingest runs.
LOAD_COLUMNS = frozenset({"extracted_at"})
FAILED = {"error", "fail", "runtime error"}


@dataclass
class Built:
    duckdb: Settings
    postgres: Settings
    builds: dict[str, list[DbtRunSummary]]


def _build(settings: Settings) -> DbtRunSummary:
    summary = run_dbt(settings, ["build"])
    assert not FAILED & set(summary.statuses), summary
    return summary


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
    local_sources: local_services.LocalEndpoints,
    postgres_server: dict[str, object],
) -> Iterator[Built]:
    unique = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("dbt-cross-db")
    pg_database = f"retailml_dbt_{unique}"
    conn = {k: postgres_server[k] for k in ("host", "port", "user")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", local_services.LOCAL_AWS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", local_services.LOCAL_AWS_KEY)
        on_duckdb = Settings(
            data_dir=root / "duckdb",
            s3_endpoint_url=local_sources.s3_endpoint_url,
            mongo_uri=local_sources.mongo_uri,
            s3_bucket=f"landing-{unique}",
            mongo_database=f"shop_{unique}",
            _env_file=None,  # type: ignore[call-arg]
        )
        # the same S3 bucket and Mongo database, extracted into PostgreSQL
        on_postgres = on_duckdb.model_copy(
            update={
                "data_dir": root / "postgres",
                "warehouse": "postgres",
                "pg_host": postgres_server["host"],
                "pg_port": postgres_server["port"],
                "pg_user": postgres_server["user"],
                "pg_database": pg_database,
            }
        )
        builds: dict[str, list[DbtRunSummary]] = {"duckdb": [], "postgres": []}
        try:
            pipeline.simulate(on_duckdb, BUSINESS)
            for days in (None, LATER_DAYS):
                if days:
                    pipeline.simulate(on_duckdb, pipeline.SimulateOptions(days=days))
                for name, settings in (("duckdb", on_duckdb), ("postgres", on_postgres)):
                    pipeline.ingest(settings)
                    builds[name].append(_build(settings))
            yield Built(on_duckdb, on_postgres, builds)
        finally:
            with psycopg.connect(**conn, dbname="postgres", autocommit=True) as con:  # type: ignore[arg-type]
                con.execute(f'DROP DATABASE IF EXISTS "{pg_database}" WITH (FORCE)')


# -- reading and comparing tables ------------------------------------------------------


def _read(
    settings: Settings, table: str, skip: frozenset[str] = RUN_COLUMNS
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """All rows of `table` but the `skip` columns, as Python values (instants in UTC)."""
    schema, name = table.split(".")
    columns_sql = (
        "select column_name from information_schema.columns "
        "where table_schema = %s and table_name = %s order by ordinal_position"
    )
    if settings.warehouse == "duckdb":
        con = duckdb.connect(str(settings.duckdb_file))
        try:
            con.execute("set TimeZone = 'UTC'")
            names = [
                r[0] for r in con.execute(columns_sql.replace("%s", "?"), [schema, name]).fetchall()
            ]
            columns = [c for c in names if c not in skip]
            rows = con.execute(f"select {', '.join(columns)} from {table}").fetchall()
        finally:
            con.close()
    else:
        with psycopg.connect(
            host=settings.pg_host,
            port=settings.pg_port,
            user=settings.pg_user,
            dbname=settings.pg_database,
            options="-c TimeZone=UTC",
        ) as con:
            names = [r[0] for r in con.execute(columns_sql, [schema, name]).fetchall()]
            columns = [c for c in names if c not in skip]
            rows = con.execute(f"select {', '.join(columns)} from {table}").fetchall()
    assert columns, f"{table} does not exist"
    return columns, rows


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # floats rounded for ordering only, so last-bit differences cannot reorder rows
    return tuple(
        (value is None, round(value, 6) if isinstance(value, float) else value) for value in row
    )


def _assert_same_rows(
    table: str, left: list[tuple[Any, ...]], right: list[tuple[Any, ...]]
) -> None:
    """Equal as sorted rows; doubles may differ in the last bits (summation order)."""
    assert len(left) == len(right), f"{table}: {len(left)} rows != {len(right)} rows"
    for a, b in zip(sorted(left, key=_sort_key), sorted(right, key=_sort_key), strict=True):
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), f"{table}: {a} != {b}"
            else:
                assert type(x) is type(y) or None in (x, y), f"{table}: {x!r} vs {y!r} in {a}"
                assert x == y, f"{table}: {a} != {b}"


# -- the tests -------------------------------------------------------------------------


def test_every_node_passes_on_both_warehouses(built: Built) -> None:
    for name, summaries in built.builds.items():
        for summary in summaries:
            assert summary.statuses.get("pass", 0) > 150, (name, summary)
            assert not FAILED & set(summary.statuses), (name, summary)


def test_marts_hold_identical_results_on_duckdb_and_postgres(built: Built) -> None:
    for table in TABLES:
        duck_columns, duck_rows = _read(built.duckdb, table, RUN_COLUMNS | LOAD_COLUMNS)
        pg_columns, pg_rows = _read(built.postgres, table, RUN_COLUMNS | LOAD_COLUMNS)
        assert duck_columns == pg_columns, table
        assert duck_rows, f"{table} is empty"
        _assert_same_rows(table, duck_rows, pg_rows)


def test_snapshots_keep_history_and_facts_join_the_version_in_effect(built: Built) -> None:
    con = duckdb.connect(str(built.duckdb.duckdb_file))
    try:
        con.execute("set TimeZone = 'UTC'")
        versioned = con.execute(
            "select count(*) from core.dim_customers where version_number > 1"
        ).fetchone()[0]
        repriced = con.execute(
            "select count(*) from core.dim_products where version_number > 1"
        ).fetchone()[0]
        assert versioned > 0 and repriced > 0
        # lines ordered after a change point at the later version, earlier ones at the former
        on_later, on_former = con.execute(
            """
            select
                count(*) filter (where versions.version_number > 1),
                count(*) filter (where versions.version_number = 1 and not versions.is_current)
            from core.fct_order_lines as lines
            inner join core.dim_customers as versions
                on lines.customer_sk = versions.customer_sk
            """
        ).fetchone()
        assert on_later > 0 and on_former > 0
        misjoined = con.execute(
            """
            select count(*)
            from core.fct_order_lines as lines
            inner join core.dim_customers as versions
                on lines.customer_sk = versions.customer_sk
            where versions.customer_sk > 0 and not (
                lines.ordered_at >= versions.valid_from
                and (versions.valid_to is null or lines.ordered_at < versions.valid_to)
            )
            """
        ).fetchone()[0]
        assert misjoined == 0
        # a training row's tier is the one in effect at its cutoff, not today's
        history_rows = con.execute(
            """
            select count(*)
            from marts.ml_churn_training as training
            inner join core.dim_customers as current_version
                on training.customer_id = current_version.customer_id and current_version.is_current
            where training.loyalty_tier != current_version.loyalty_tier
            """
        ).fetchone()[0]
        tier_changes = con.execute(
            """
            select count(*) from core.dim_customers as later
            inner join core.dim_customers as earlier
                on later.customer_id = earlier.customer_id
                and later.version_number = earlier.version_number + 1
            where later.loyalty_tier != earlier.loyalty_tier
            """
        ).fetchone()[0]
        assert tier_changes == 0 or history_rows > 0
    finally:
        con.close()


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
def test_incremental_history_equals_a_full_refresh(built: Built, warehouse: str) -> None:
    settings = getattr(built, warehouse)
    incremental = {table: _read(settings, table) for table in TABLES}
    summary = run_dbt(settings, ["run", "--full-refresh"])
    assert not FAILED & set(summary.statuses), summary
    for table in TABLES:
        columns, rows = _read(settings, table)
        assert columns == incremental[table][0], table
        _assert_same_rows(table, incremental[table][1], rows)


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
def test_source_freshness_and_docs(built: Built, warehouse: str) -> None:
    settings = getattr(built, warehouse)
    freshness = run_dbt(settings, ["source", "freshness"])
    assert freshness.statuses == {"pass": 4}, freshness  # 3 shop tables + the load ledger
    run_dbt(settings, ["docs", "generate"])
    target = Path(settings.data_dir) / "dbt" / "target"
    catalog = json.loads((target / "catalog.json").read_text())
    manifest = json.loads((target / "manifest.json").read_text())
    assert "model.retailml.ml_churn_training" in catalog["nodes"]
    assert "snapshot.retailml.snap_shop__customers" in catalog["nodes"]
    assert "source.retailml.shop.order_lines" in catalog["sources"]
    # lineage: each exposure reaches back to the raw S3 and Mongo extracts
    parents = manifest["parent_map"]

    def ancestors(node: str) -> set[str]:
        seen: set[str] = set()
        stack = [node]
        while stack:
            for parent in parents.get(stack.pop(), []):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    for exposure in ("bi_sales_dashboard", "churn_model", "demand_model", "prediction_api"):
        reached = ancestors(f"exposure.retailml.{exposure}")
        assert {
            "source.retailml.shop.order_lines",
            "source.retailml.shop.customers",
            "source.retailml.shop.products",
        } <= reached, exposure


def test_dates_and_instants_keep_their_types(built: Built) -> None:
    """A date stays a date and an instant an aware datetime on both warehouses."""
    for settings in (built.duckdb, built.postgres):
        columns, rows = _read(settings, "core.fct_orders")
        row = dict(zip(columns, rows[0], strict=True))
        assert type(row["order_date"]) is date
        assert isinstance(row["ordered_at"], datetime) and row["ordered_at"].utcoffset() is not None
