"""PostgreSQL -> Arrow (binary COPY decoded column-wise, :mod:`retailml.warehouse.pg_read`) on a
real server: every type, NULLs in every position, empty results, parameters, errors, early
close, transactions, and streaming in batches with flat memory. psycopg's own row-by-row
fetch is the oracle where the values are random."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import psycopg
import pyarrow as pa
import pytest

from retailml.warehouse.base import WarehouseError
from retailml.warehouse.duckdb import DuckDBWarehouse
from retailml.warehouse.postgres import PostgresWarehouse

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn(postgres_server: dict[str, object], pg_database: str) -> str:
    server = postgres_server
    return f"host={server['host']} port={server['port']} user={server['user']} dbname={pg_database}"


@pytest.fixture
def warehouse(dsn: str) -> Iterator[PostgresWarehouse]:
    wh = PostgresWarehouse(dsn)
    yield wh
    wh.close()


ALL_TYPES = """
create table t (
    id int4, b boolean, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric,
    n2 numeric(12, 2), n38 numeric(38, 10), n50 numeric(50, 5), s text, v varchar(10),
    c char(3), d date, tm time, ts timestamp, tz timestamptz, j json, jb jsonb, by bytea,
    u uuid, iv interval, arr int4[], o oid
)
"""
ALL_VALUES = """
insert into t values
(1, true, -32768, -2147483648, -9223372036854775808, 1.5, '-0', 1.23456789012345678901,
 -1234567890.12, 1234567890123456789012345678.0123456789, -123456789012345678901234567890.12345,
 'naïve "quoted", with
newline	tab \\ backslash', '', 'ab', '0001-01-01', '23:59:59.999999',
 '1999-12-31 23:59:59.999999', '2024-01-02 03:04:05.123456+02', '{"a": [1, 2]}',
 '{"b": {"c": null}}', '\\x00ff0a', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 02:00:00',
 '{1,NULL,3}', 4000000000),
(2, false, 32767, 2147483647, 9223372036854775807, 'Infinity', 'NaN', -0.5, 0, 0, 0,
 'ünïcødé ✓', 'x', 'abc', '9999-12-31', '00:00:00', '2262-04-11 23:47:16', '1970-01-01 00:00:00+00',
 '[]', '[]', '\\x', '00000000-0000-0000-0000-000000000000', '-1 mons', '{}', 0),
(3, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
 null, null, null, null, null, null, null, null, null)
"""


def test_every_type_reads_exactly(warehouse: PostgresWarehouse) -> None:
    warehouse.execute(ALL_TYPES)
    warehouse.execute(ALL_VALUES)
    table = warehouse.query_arrow("select * from t order by id")
    assert dict(zip(table.column_names, table.schema.types, strict=True)) == {
        "id": pa.int32(),
        "b": pa.bool_(),
        "i2": pa.int16(),
        "i4": pa.int32(),
        "i8": pa.int64(),
        "f4": pa.float32(),
        "f8": pa.float64(),
        "n": pa.float64(),
        "n2": pa.decimal128(12, 2),
        "n38": pa.decimal128(38, 10),
        "n50": pa.decimal256(50, 5),
        "s": pa.string(),
        "v": pa.string(),
        "c": pa.string(),
        "d": pa.date32(),
        "tm": pa.time64("us"),
        "ts": pa.timestamp("us"),
        "tz": pa.timestamp("us", tz="UTC"),
        "j": pa.string(),
        "jb": pa.string(),
        "by": pa.binary(),
        "u": pa.string(),
        "iv": pa.string(),
        "arr": pa.string(),
        "o": pa.int64(),
    }
    first, second, nulls = table.to_pylist()
    assert first == {
        "id": 1,
        "b": True,
        "i2": -32768,
        "i4": -2147483648,
        "i8": -9223372036854775808,
        "f4": 1.5,
        "f8": 0.0,
        "n": 1.2345678901234568,
        "n2": Decimal("-1234567890.12"),
        "n38": Decimal("1234567890123456789012345678.0123456789"),
        "n50": Decimal("-123456789012345678901234567890.12345"),
        "s": 'naïve "quoted", with\nnewline\ttab \\ backslash',
        "v": "",
        "c": "ab ",
        "d": date(1, 1, 1),
        "tm": time(23, 59, 59, 999999),
        "ts": datetime(1999, 12, 31, 23, 59, 59, 999999),
        "tz": datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=UTC),
        "j": '{"a": [1, 2]}',
        "jb": '{"b": {"c": null}}',
        "by": b"\x00\xff\n",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "iv": "1 day 02:00:00",
        "arr": "{1,NULL,3}",
        "o": 4000000000,
    }
    assert math.copysign(1.0, first["f8"]) == -1.0  # -0.0 kept
    assert second["f4"] == math.inf and math.isnan(second["f8"])
    assert (second["i2"], second["i4"], second["i8"]) == (32767, 2**31 - 1, 2**63 - 1)
    assert second["n"] == -0.5 and second["n2"] == Decimal("0.00")
    assert second["s"] == "ünïcødé ✓" and second["c"] == "abc" and second["by"] == b""
    assert second["d"] == date(9999, 12, 31)
    assert second["ts"] == datetime(2262, 4, 11, 23, 47, 16)
    assert second["tz"] == datetime(1970, 1, 1, tzinfo=UTC)
    assert json.loads(second["jb"]) == [] and second["iv"] == "-1 mons"
    assert nulls == {name: (3 if name == "id" else None) for name in table.column_names}


def test_null_and_empty_string_stay_distinct(warehouse: PostgresWarehouse) -> None:
    table = warehouse.query_arrow(
        "select * from (values (1, ''), (2, null), (3, ' '), (4, '')) as v(i, s) order by i"
    )
    assert table.column("s").to_pylist() == ["", None, " ", ""]
    assert table.column("s").null_count == 1


RANDOM_ROWS = """
create table r as
select
    i,
    case when random() < 0.3 then null else md5(i::text) end as s1,
    case when random() < 0.2 then null else (random() * 1000)::int4 end as a,
    case when random() < 0.2 then null else random() end as f,
    case when random() < 0.5 then null else random() < 0.5 end as flag,
    case when random() < 0.1 then null
         else repeat('x', (random() * 90)::int) end as s2,
    case when random() < 0.2 then null else date '2020-01-01' + (random() * 999)::int end as d,
    case when random() < 0.2 then null
         else timestamptz '2024-01-01' + random() * interval '400 days' end as ts,
    (case when random() < 0.2 then null else random() * 1e6 end)::numeric(12, 2) as amount,
    case when random() < 0.2 then null else (random() * 1e6)::numeric(12, 2) end as sum_like,
    case when random() < 0.3 then null else ('{"k": ' || i || '}')::jsonb end as doc,
    case when random() < 0.2 then null else (random() * 1e12)::int8 end as big
from generate_series(1, %s) as g(i)
"""


def _python_value(name: str, value: object) -> object:
    """psycopg's Python value in the form the Arrow read gives: jsonb as text, a numeric
    without declared precision (``sum_like``: a CASE drops the typmod) as a float."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    if name == "sum_like" and value is not None:
        return float(value)  # type: ignore[arg-type]
    return value


@pytest.mark.parametrize("batch_rows", [7, 1_000, 100_000])
def test_random_nulls_match_psycopg(
    warehouse: PostgresWarehouse, dsn: str, batch_rows: int
) -> None:
    """NULLs anywhere (inside runs of fixed-width fields, around strings): the decoder's
    window reads and its field-by-field walk of the rows with NULLs agree with psycopg."""
    warehouse.execute(RANDOM_ROWS % 5_000)
    sql = "select * from r order by i"
    batches = list(warehouse.iter_arrow(sql, batch_rows=batch_rows))
    assert all(b.num_rows <= batch_rows for b in batches)
    got = pa.Table.from_batches(batches).to_pylist()
    with psycopg.connect(dsn) as con:
        con.execute("SET TIME ZONE 'UTC'")
        cur = con.execute(sql)
        names = [c.name for c in cur.description or []]
        expected = [
            {n: _python_value(n, v) for n, v in zip(names, row, strict=True)} for row in cur
        ]
    assert len(got) == 5_000
    types = pa.Table.from_batches(batches).schema
    assert types.field("amount").type == pa.decimal128(12, 2)
    assert types.field("sum_like").type == pa.float64()
    for g, e in zip(got, expected, strict=True):
        assert g == e, {k: (g[k], e[k]) for k in g if g[k] != e[k]}


def test_empty_results_keep_their_schema(warehouse: PostgresWarehouse) -> None:
    warehouse.execute(ALL_TYPES)
    table = warehouse.query_arrow("select * from t")
    assert table.num_rows == 0
    assert table.schema.field("n2").type == pa.decimal128(12, 2)
    assert table.schema.field("tz").type == pa.timestamp("us", tz="UTC")
    assert list(warehouse.iter_arrow("select * from t")) == []
    assert warehouse.query_arrow("select 1 as x where false").schema == pa.schema(
        [("x", pa.int32())]
    )


def test_parameters_are_bound_not_spliced(warehouse: PostgresWarehouse) -> None:
    warehouse.execute("create table p (name text, amount numeric(8, 2), day date)")
    warehouse.execute(
        "insert into p values ('o''brien', 1.50, '2024-01-01'), ('50%?', 2, '2024-01-02'), "
        "('x', null, null)"
    )
    assert warehouse.query_arrow("select * from p where name = ?", ["o'brien"]).num_rows == 1
    rows = warehouse.query_arrow(
        "select name from p where name = ? and day >= ? and amount > ? and '?' = '?'",
        ["50%?", date(2024, 1, 2), Decimal("1.99")],
    )
    assert rows.column("name").to_pylist() == ["50%?"]
    hostile = "x'; drop table p; --"
    assert warehouse.query_arrow("select * from p where name = ?", [hostile]).num_rows == 0
    assert warehouse.query_arrow("select * from p where name = ?", [None]).num_rows == 0
    assert warehouse.scalar("select count(*) from p") == 3  # still there
    batches = list(warehouse.iter_arrow("select name from p where day = ?", [date(2024, 1, 1)]))
    assert pa.Table.from_batches(batches).column("name").to_pylist() == ["o'brien"]


def test_duplicate_names_and_server_side_text(warehouse: PostgresWarehouse) -> None:
    table = warehouse.query_arrow(
        'select 1 as a, gen_random_uuid() as a, 2.5::numeric(4, 1) as a, \'x\' as "weird ""name";'
    )
    assert table.column_names == ["a", "a", "a", 'weird "name']
    assert table.schema.types == [pa.int32(), pa.string(), pa.decimal128(4, 1), pa.string()]
    assert UUID(table.column(1)[0].as_py())


def test_values_arrow_cannot_hold_are_named(warehouse: PostgresWarehouse) -> None:
    with pytest.raises(WarehouseError, match=r"'d'.*infinity"):
        warehouse.query_arrow("select 'infinity'::date as d")
    with pytest.raises(WarehouseError, match=r"'ts'.*infinity"):
        warehouse.query_arrow("select '-infinity'::timestamptz as ts")
    with pytest.raises(WarehouseError, match=r"'x'.*NaN"):
        warehouse.query_arrow("select 'NaN'::numeric(5, 2) as x")
    assert math.isnan(warehouse.query_arrow("select 'NaN'::numeric as x").column(0)[0].as_py())
    assert warehouse.scalar("select 1") == 1  # the connection is fine


def test_server_errors_surface_and_the_connection_recovers(warehouse: PostgresWarehouse) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable):
        warehouse.query_arrow("select * from no_such_table")
    # an error after 150,000 rows have been sent
    with pytest.raises(psycopg.errors.DivisionByZero):
        list(
            warehouse.iter_arrow(
                "select i, 1 / (150000 - i) as x from generate_series(1, 300000) as g(i)",
                batch_rows=10_000,
            )
        )
    assert warehouse.query_arrow("select 42 as x").column("x").to_pylist() == [42]


def test_closing_a_stream_early_cancels_the_copy(warehouse: PostgresWarehouse) -> None:
    stream = warehouse.iter_arrow(
        "select i, md5(i::text) as s from generate_series(1, 2000000) as g(i)", batch_rows=1_000
    )
    first = next(stream)
    assert first.num_rows == 1_000
    stream.close()
    assert warehouse.scalar("select count(*) from generate_series(1, 10)") == 10
    assert warehouse.query_arrow("select 'ok' as s").column("s").to_pylist() == ["ok"]


def test_reads_see_the_open_transaction(warehouse: PostgresWarehouse) -> None:
    """The read runs on the warehouse's own connection: inside a transaction it sees the
    transaction's uncommitted rows (a second connection, as ADBC would need, would not)."""
    warehouse.execute("create table public.x (i int8)")

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), warehouse.transaction():
        warehouse.append_arrow("public.x", pa.table({"i": pa.array(range(50_000), pa.int64())}))
        assert warehouse.query_arrow("select count(*) as n from x").column(0)[0].as_py() == 50_000
        assert sum(b.num_rows for b in warehouse.iter_arrow("select * from x")) == 50_000
        raise Rollback
    assert warehouse.scalar("select count(*) from x") == 0


def test_large_results_stream_in_batches(warehouse: PostgresWarehouse) -> None:
    sql = (
        "select i, 'C' || lpad(i::text, 8, '0') as customer_id, i * 0.5 as half, "
        "i % 3 = 0 as tri from generate_series(1, 400000) as g(i)"
    )
    sizes, total, half = [], 0, 0.0
    for batch in warehouse.iter_arrow(sql, batch_rows=50_000):
        sizes.append(batch.num_rows)
        total += sum(batch.column("i").to_pylist())
        half += pa.compute.sum(batch.column("half")).as_py()
    assert sizes == [50_000] * 8
    assert total == 400000 * 400001 // 2
    assert half == pytest.approx(total * 0.5)
    table = warehouse.query_arrow(sql)
    assert table.num_rows == 400_000 and table.column("customer_id")[-1].as_py() == "C00400000"


STREAM_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from retailml.warehouse.postgres import PostgresWarehouse
    dsn, rows = sys.argv[1], int(sys.argv[2])
    wh = PostgresWarehouse(dsn)
    sql = f"select i, repeat(md5(i::text), 4) as s, i * 1.5 as x from generate_series(1, {rows}) as g(i)"
    seen = sum(b.num_rows for b in wh.iter_arrow(sql, batch_rows=20_000))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": seen, "peak_mib": peak_kib / 1024}))
    """
)


def _stream_peak(dsn: str, rows: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", STREAM_SCRIPT, dsn, str(rows)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == rows
    return float(result["peak_mib"])


@pytest.mark.slow
def test_streaming_memory_is_flat(dsn: str) -> None:
    """Four times the rows (about 110 MiB more of strings and numbers, were they held) must
    not raise the reading process's peak memory by more than a few batches' worth."""
    small = _stream_peak(dsn, 200_000)
    large = _stream_peak(dsn, 800_000)
    assert large - small < 50, (small, large)
    print(f"peak RSS {small:.0f} MiB for 200,000 rows, {large:.0f} MiB for 800,000")


def test_duckdb_reads_are_native_arrow(tmp_path: Path) -> None:
    """The embedded warehouse hands out DuckDB's own Arrow results and record batch reader."""
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    try:
        sql = "select i, 'c' || i as s, i::integer as n from range(250000) as t(i)"
        batches = list(wh.iter_arrow(sql, batch_rows=100_000))
        assert len(batches) >= 3 and all(b.num_rows <= 100_000 for b in batches)
        table = wh.query_arrow("select * from (" + sql + ") where i < ?", [10])
        assert isinstance(table, pa.Table) and table.num_rows == 10
        assert table.schema.types == [pa.int64(), pa.string(), pa.int32()]
    finally:
        wh.close()
