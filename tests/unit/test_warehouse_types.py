from __future__ import annotations

import pyarrow as pa
import pytest

from retailml.warehouse.base import WarehouseError, qualified, split_name
from retailml.warehouse.duckdb import duckdb_type
from retailml.warehouse.postgres import _to_pg_placeholders, postgres_type


@pytest.mark.parametrize(
    ("arrow_type", "duckdb", "postgres"),
    [
        (pa.int32(), "BIGINT", "bigint"),
        (pa.float32(), "DOUBLE", "double precision"),
        (pa.bool_(), "BOOLEAN", "boolean"),
        (pa.string(), "VARCHAR", "text"),
        (pa.large_string(), "VARCHAR", "text"),
        (pa.date32(), "DATE", "date"),
        (pa.timestamp("us"), "TIMESTAMP", "timestamp"),
        (pa.timestamp("ns", tz="UTC"), "TIMESTAMPTZ", "timestamptz"),
        (pa.decimal128(12, 2), "DECIMAL(12,2)", "numeric(12,2)"),
        (pa.json_(pa.string()), "JSON", "jsonb"),
        (pa.binary(), "BLOB", "bytea"),
    ],
)
def test_arrow_types_map_to_each_warehouse(
    arrow_type: pa.DataType, duckdb: str, postgres: str
) -> None:
    assert duckdb_type(arrow_type) == duckdb
    assert postgres_type(arrow_type) == postgres


def test_an_unmappable_type_is_named() -> None:
    with pytest.raises(WarehouseError, match="list<item: int64>"):
        duckdb_type(pa.list_(pa.int64()))


def test_table_names_must_be_qualified() -> None:
    assert split_name("raw.order_lines") == ("raw", "order_lines")
    assert qualified('raw.we"ird') == '"raw"."we""ird"'
    with pytest.raises(WarehouseError, match=r"schema\.table"):
        split_name("order_lines")


def test_placeholders_for_psycopg() -> None:
    assert _to_pg_placeholders("select ? where x like '%a'") == "select %s where x like '%%a'"
