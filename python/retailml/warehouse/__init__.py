"""Warehouse clients behind one interface; :func:`open_warehouse` picks one from settings."""

from __future__ import annotations

from ..config import Settings
from .base import Warehouse, WarehouseError


def open_warehouse(settings: Settings) -> Warehouse:
    """Connect to the configured warehouse (creating the PostgreSQL database if needed)."""
    if settings.warehouse == "duckdb":
        from .duckdb import DuckDBWarehouse

        return DuckDBWarehouse(settings.duckdb_file, memory_limit=settings.duckdb_memory_limit)
    if settings.warehouse == "postgres":
        from .postgres import PostgresWarehouse, conninfo, ensure_database

        ensure_database(settings)
        return PostgresWarehouse(conninfo(settings))
    if settings.warehouse == "bigquery":
        # Ingestion (Parquet load jobs) is what runs on BigQuery so far; the other stages'
        # SQL is written for DuckDB and PostgreSQL and not yet verified there.
        from .bigquery import BigQueryWarehouse

        return BigQueryWarehouse.from_settings(settings)
    raise WarehouseError(f"unknown warehouse {settings.warehouse!r}")


__all__ = ["Warehouse", "WarehouseError", "open_warehouse"]
