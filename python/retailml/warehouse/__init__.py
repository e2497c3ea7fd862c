"""Warehouse clients behind one interface; :func:`open_warehouse` picks one from settings."""

from __future__ import annotations

from ..config import Settings
from .base import Warehouse, WarehouseError


def open_warehouse(settings: Settings) -> Warehouse:
    """Connect to the configured warehouse (creating the PostgreSQL database if needed)."""
    if settings.warehouse == "duckdb":
        from .duckdb import DuckDBWarehouse

        return DuckDBWarehouse(settings.duckdb_file)
    if settings.warehouse == "postgres":
        from .postgres import PostgresWarehouse, conninfo, ensure_database

        ensure_database(settings)
        return PostgresWarehouse(conninfo(settings))
    raise WarehouseError(
        "the Python layer has no BigQuery client yet: with RETAILML_WAREHOUSE=bigquery only "
        "the dbt project runs (dbt parse/compile/build with the 'bigquery' target)"
    )


__all__ = ["Warehouse", "WarehouseError", "open_warehouse"]
