"""The load ledger and the quarantine: bookkeeping tables committed with the rows they describe."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from ..warehouse.base import Warehouse, ensure_table

LEDGER_TABLE = "raw._load_ledger"
QUARANTINE_TABLE = "raw._quarantine"
DRIFT_TABLE = "raw._schema_drift"

LEDGER_SCHEMA = pa.schema(
    [
        # the load (one object, or one Mongo chunk): raw rows carry it as ``_load_id``, the
        # compact link from a raw row to its batch, source object/watermark and ETag
        ("load_id", pa.int64()),
        ("batch_id", pa.string()),
        ("source", pa.string()),  # 's3' or 'mongo'
        ("target_table", pa.string()),
        ("object_key", pa.string()),  # s3://bucket/key, or mongo://db/collection
        ("object_version", pa.string()),  # S3 ETag, or the Mongo watermark reached
        # 'loaded', 'quarantined' (nothing loaded), 'removed' (a backfill found the object
        # gone and deleted its rows) or 'backfill' (a Mongo window re-extracted)
        ("status", pa.string()),
        ("row_count", pa.int64()),
        ("checksum", pa.string()),
        ("loaded_at", pa.timestamp("us", tz="UTC")),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("batch_id", pa.string()),
        ("source", pa.string()),
        ("object_key", pa.string()),
        ("record", pa.string()),  # the offending record as text, or null for a whole object
        ("error", pa.string()),
        ("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)


DRIFT_SCHEMA = pa.schema(
    [
        ("batch_id", pa.string()),
        ("object_key", pa.string()),
        ("target_table", pa.string()),
        ("column_name", pa.string()),
        ("change", pa.string()),  # 'added', 'missing' or 'type'
        ("expected_type", pa.string()),
        ("found_type", pa.string()),
        ("rows_as_text", pa.int64()),  # values kept as text in _raw_text
        ("detected_at", pa.timestamp("us", tz="UTC")),
    ]
)


class IngestError(ValueError):
    """A request the ingestion cannot carry out (an empty backfill range, an unknown source)."""


def new_batch_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


_EPOCH_US = 1_577_836_800_000_000  # 2020-01-01 in microseconds since 1970-01-01
_RANDOM_BITS = 12
_last_load_id = 0
_load_id_lock = threading.Lock()


def new_load_id() -> int:
    """A new ``load_id``: microseconds since 2020 (51 bits, until 2091) then 12 random bits.

    Made by the client, so every warehouse (BigQuery has no sequences) gets it the same way;
    increasing within a process, ordered by time across processes, and two runs collide only
    if they draw the same 12 bits in the same microsecond."""
    global _last_load_id
    value = ((time.time_ns() // 1000 - _EPOCH_US) << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
    with _load_id_lock:
        value = max(value, _last_load_id + 1)
        _last_load_id = value
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def ensure_bookkeeping(warehouse: Warehouse) -> None:
    ensure_table(warehouse, LEDGER_TABLE, LEDGER_SCHEMA)
    warehouse.create_table(QUARANTINE_TABLE, QUARANTINE_SCHEMA)
    warehouse.create_table(DRIFT_TABLE, DRIFT_SCHEMA)


def ledger_row(
    *,
    load_id: int | None = None,
    batch_id: str,
    source: str,
    target_table: str,
    object_key: str,
    object_version: str,
    status: str,
    row_count: int,
    checksum: str,
) -> pa.Table:
    return ledger_rows(
        [
            {
                "load_id": new_load_id() if load_id is None else load_id,
                "batch_id": batch_id,
                "source": source,
                "target_table": target_table,
                "object_key": object_key,
                "object_version": object_version,
                "status": status,
                "row_count": row_count,
                "checksum": checksum,
            }
        ]
    )


def ledger_rows(rows: list[dict[str, object]]) -> pa.Table:
    """Ledger rows (``loaded_at`` now) from dicts with the other columns."""
    now = utcnow()
    return pa.Table.from_pylist([{**r, "loaded_at": now} for r in rows], schema=LEDGER_SCHEMA)


@dataclass(frozen=True)
class QuarantinedRecord:
    object_key: str
    error: str
    record: str | None = None


def quarantine_table(batch_id: str, source: str, records: list[QuarantinedRecord]) -> pa.Table:
    now = utcnow()
    return pa.Table.from_pylist(
        [
            {
                "batch_id": batch_id,
                "source": source,
                "object_key": r.object_key,
                "record": r.record,
                "error": r.error,
                "quarantined_at": now,
            }
            for r in records
        ],
        schema=QUARANTINE_SCHEMA,
    )


@dataclass(frozen=True)
class DriftRecord:
    """Schema drift seen in one object (see :class:`~retailml.ingest.conform.DriftNote`)."""

    object_key: str
    target_table: str
    column: str
    change: str
    expected_type: str | None
    found_type: str | None
    rows_as_text: int
    description: str


def drift_table(batch_id: str, records: list[DriftRecord]) -> pa.Table:
    now = utcnow()
    return pa.Table.from_pylist(
        [
            {
                "batch_id": batch_id,
                "object_key": r.object_key,
                "target_table": r.target_table,
                "column_name": r.column,
                "change": r.change,
                "expected_type": r.expected_type,
                "found_type": r.found_type,
                "rows_as_text": r.rows_as_text,
                "detected_at": now,
            }
            for r in records
        ],
        schema=DRIFT_SCHEMA,
    )


@dataclass
class LoadReport:
    """What one ingestion (or backfill) run did, for logs and flow artifacts."""

    batch_id: str
    objects_loaded: int = 0
    objects_skipped: int = 0
    objects_removed: int = 0
    rows_loaded: int = 0
    rows_replaced: int = 0  # rows deleted because a new version (or a backfill) replaced them
    quarantined: list[QuarantinedRecord] = field(default_factory=list)
    drift: list[DriftRecord] = field(default_factory=list)
    by_table: dict[str, int] = field(default_factory=dict)

    def add_rows(self, table: str, rows: int) -> None:
        self.rows_loaded += rows
        self.by_table[table] = self.by_table.get(table, 0) + rows

    def merge(self, other: LoadReport) -> None:
        self.objects_loaded += other.objects_loaded
        self.objects_skipped += other.objects_skipped
        self.objects_removed += other.objects_removed
        self.rows_replaced += other.rows_replaced
        self.quarantined.extend(other.quarantined)
        self.drift.extend(other.drift)
        for table, rows in other.by_table.items():
            self.add_rows(table, rows)

    def summary(self) -> str:
        text = (
            f"batch {self.batch_id}: {self.rows_loaded} rows from {self.objects_loaded} "
            f"objects/collections ({self.objects_skipped} already loaded)"
        )
        if self.by_table:
            text += "; " + ", ".join(f"{t}={n}" for t, n in sorted(self.by_table.items()))
        if self.rows_replaced:
            text += f"; {self.rows_replaced} earlier rows replaced"
        if self.objects_removed:
            text += f"; {self.objects_removed} objects gone from the source (their rows removed)"
        if self.drift:
            text += f"; SCHEMA DRIFT {len(self.drift)} (see {DRIFT_TABLE}): " + "; ".join(
                f"{d.object_key}: {d.description}" for d in self.drift[:5]
            )
        if self.quarantined:
            text += f"; QUARANTINED {len(self.quarantined)} (see {QUARANTINE_TABLE}): " + "; ".join(
                f"{q.object_key}: {q.error}" for q in self.quarantined[:5]
            )
        return text
