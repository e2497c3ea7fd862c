"""Extract/load: S3 order exports and MongoDB documents into the warehouse's ``raw`` schema."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from typing import Any

from ..sources.object_store import ObjectStore
from ..warehouse.base import Warehouse
from .ledger import IngestError, LoadReport, new_batch_id
from .mongo_docs import COLLECTIONS, backfill_collection, ingest_collection
from .s3_orders import backfill_s3_orders, ingest_s3_orders

SOURCES = ("s3", "mongo")


def ingest_all(
    warehouse: Warehouse,
    objects: ObjectStore,
    db: Any,
    *,
    prefix: str,
    progress: Callable[[str], None] | None = None,
) -> LoadReport:
    """One ingestion run over every source; safe to repeat (loads only what is new)."""
    report = LoadReport(new_batch_id())
    for spec in COLLECTIONS:
        report.merge(
            ingest_collection(warehouse, db, spec, batch_id=report.batch_id, progress=progress)
        )
    report.merge(
        ingest_s3_orders(
            warehouse, objects, prefix=prefix, batch_id=report.batch_id, progress=progress
        )
    )
    return report


def backfill_all(
    warehouse: Warehouse,
    objects: ObjectStore,
    db: Any,
    *,
    prefix: str,
    start: date,
    end: date,
    sources: Iterable[str] = SOURCES,
    progress: Callable[[str], None] | None = None,
) -> LoadReport:
    """Re-extract ``start..end`` (inclusive days): the S3 ``dt=`` partitions of those days
    and/or the Mongo documents updated on them (UTC), each replacing exactly what that range
    loaded before, one transaction per source table."""
    chosen = tuple(sources)
    unknown = set(chosen) - set(SOURCES)
    if unknown:
        raise IngestError(f"unknown backfill source(s) {sorted(unknown)}; choose from {SOURCES}")
    if end < start:
        raise IngestError(f"backfill range is empty: {start} is after {end}")
    report = LoadReport(new_batch_id())
    if "mongo" in chosen:
        window = (datetime.combine(start, time()), datetime.combine(end + timedelta(1), time()))
        for spec in COLLECTIONS:
            report.merge(
                backfill_collection(
                    warehouse,
                    db,
                    spec,
                    start=window[0],
                    end=window[1],
                    batch_id=report.batch_id,
                    progress=progress,
                )
            )
    if "s3" in chosen:
        report.merge(
            backfill_s3_orders(
                warehouse,
                objects,
                prefix=prefix,
                start=start,
                end=end,
                batch_id=report.batch_id,
                progress=progress,
            )
        )
    return report


__all__ = ["SOURCES", "IngestError", "LoadReport", "backfill_all", "ingest_all"]
