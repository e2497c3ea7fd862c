"""Extract/load: S3 order exports and MongoDB documents into the warehouse's ``raw`` schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..sources.object_store import ObjectStore
from ..warehouse.base import Warehouse
from .ledger import LoadReport, new_batch_id
from .mongo_docs import COLLECTIONS, ingest_collection
from .s3_orders import ingest_s3_orders


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


__all__ = ["LoadReport", "ingest_all"]
