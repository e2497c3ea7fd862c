"""MongoDB collections into ``raw.customers`` / ``raw.products``, incremental on ``updated_at``.

The watermark is ``(updated_at, _id)``: documents are read with a plain filtered, sorted
``find`` cursor (``updated_at >= watermark``, ties broken on ``_id``), in chunks; each chunk's
rows and its ledger row (holding the new watermark) commit in one transaction.

:func:`backfill_collection` re-extracts an ``updated_at`` window and replaces, in one
transaction, the raw rows of the document versions it finds again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from ..warehouse.base import Warehouse, qualified
from .ledger import (
    LEDGER_TABLE,
    QUARANTINE_TABLE,
    LoadReport,
    QuarantinedRecord,
    ensure_bookkeeping,
    ensure_table,
    ledger_row,
    new_load_id,
    quarantine_table,
    utcnow,
)

JSON_TYPE = pa.json_(pa.string())


@dataclass(frozen=True)
class CollectionSpec:
    collection: str
    table: str
    fields: tuple[tuple[str, pa.DataType], ...]  # top-level scalar fields extracted

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("_id", pa.string()),
                ("updated_at", pa.timestamp("us")),
                *list(self.fields),
                ("_document", JSON_TYPE),
                ("_batch_id", pa.string()),
                ("_load_id", pa.int64()),  # the chunk's raw._load_ledger row
                ("_extracted_at", pa.timestamp("us", tz="UTC")),
            ]
        )


COLLECTIONS = (
    CollectionSpec(
        "customers",
        "raw.customers",
        (
            ("email", pa.string()),
            ("loyalty_tier", pa.string()),
            ("signup_channel", pa.string()),
            ("marketing_opt_in", pa.bool_()),
            ("created_at", pa.timestamp("us")),
        ),
    ),
    CollectionSpec(
        "products",
        "raw.products",
        (
            ("name", pa.string()),
            ("category", pa.string()),
            ("price", pa.float64()),
            ("currency", pa.string()),
            ("is_active", pa.bool_()),
            ("created_at", pa.timestamp("us")),
        ),
    ),
)


class DocumentTypeError(ValueError):
    pass


def _convert(value: Any, type_: pa.DataType, name: str) -> Any:
    if value is None:
        return None
    if pa.types.is_string(type_):
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    elif pa.types.is_boolean(type_):
        if isinstance(value, bool):
            return value
    elif pa.types.is_floating(type_):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif pa.types.is_timestamp(type_) and isinstance(value, datetime):
        return value
    raise DocumentTypeError(
        f"field {name!r}: expected {type_}, got {type(value).__name__} {value!r}"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def document_row(doc: dict[str, Any], spec: CollectionSpec) -> dict[str, Any]:
    """One raw row from one document; raises DocumentTypeError naming a mistyped field."""
    if not isinstance(doc.get("updated_at"), datetime):
        raise DocumentTypeError(
            f"field 'updated_at': expected a datetime, got {doc.get('updated_at')!r}"
        )
    row = {"_id": str(doc["_id"]), "updated_at": doc["updated_at"]}
    for name, type_ in spec.fields:
        row[name] = _convert(doc.get(name), type_, name)
    row["_document"] = json.dumps(doc, default=_json_default, sort_keys=True)
    return row


def to_arrow(
    rows: list[dict[str, Any]], spec: CollectionSpec, batch_id: str, load_id: int
) -> pa.Table:
    extracted_at = utcnow()
    for row in rows:
        row["_batch_id"] = batch_id
        row["_load_id"] = load_id
        row["_extracted_at"] = extracted_at
    storage_schema = pa.schema(
        pa.field(f.name, f.type.storage_type if f.type == JSON_TYPE else f.type)
        for f in spec.schema
    )
    table = pa.Table.from_pylist(rows, schema=storage_schema)
    index = table.schema.get_field_index("_document")
    return table.set_column(
        index,
        pa.field("_document", JSON_TYPE),
        pa.ExtensionArray.from_storage(JSON_TYPE, table.column(index).combine_chunks()),
    )


def _watermark(warehouse: Warehouse, key: str) -> tuple[datetime | None, str | None]:
    value = warehouse.scalar(
        f"select object_version from {LEDGER_TABLE} where object_key = ? and status = 'loaded' "
        "order by loaded_at desc limit 1",
        [key],
    )
    if value is None:
        return None, None
    mark = json.loads(value)
    return datetime.fromisoformat(mark["updated_at"]), mark["_id"]


def _new_documents(
    collection: Any, since: datetime | None, after_id: str | None, batch_size: int
) -> Iterator[dict[str, Any]]:
    query = {} if since is None else {"updated_at": {"$gte": since}}
    cursor = collection.find(query).sort([("updated_at", 1), ("_id", 1)]).batch_size(batch_size)
    for doc in cursor:
        if since is not None and doc.get("updated_at") == since and str(doc["_id"]) <= after_id:
            continue
        yield doc


def _chunk_rows(
    chunk: list[dict[str, Any]], spec: CollectionSpec, key: str
) -> tuple[list[dict[str, Any]], list[QuarantinedRecord], str]:
    """The raw rows of a chunk, the documents quarantined, and a checksum of the chunk."""
    rows, bad = [], []
    digest = hashlib.sha256()
    for doc in chunk:
        text = json.dumps(doc, default=_json_default, sort_keys=True)
        digest.update(text.encode())
        try:
            rows.append(document_row(doc, spec))
        except (DocumentTypeError, KeyError) as exc:
            bad.append(QuarantinedRecord(f"{key}/{doc.get('_id')}", str(exc), text[:10_000]))
    return rows, bad, f"sha256:{digest.hexdigest()}"


def _chunks(docs: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ingest_collection(
    warehouse: Warehouse,
    db: Any,
    spec: CollectionSpec,
    *,
    batch_id: str,
    chunk_size: int = 20_000,
    progress: Callable[[str], None] | None = None,
) -> LoadReport:
    """Load the documents changed since the collection's watermark."""
    ensure_bookkeeping(warehouse)
    ensure_table(warehouse, spec.table, spec.schema)
    key = f"mongo://{db.name}/{spec.collection}"
    report = LoadReport(batch_id)
    since, after_id = _watermark(warehouse, key)
    for chunk in _chunks(_new_documents(db[spec.collection], since, after_id, 5_000), chunk_size):
        rows, bad, checksum = _chunk_rows(chunk, spec, key)
        dated = [d for d in chunk if isinstance(d.get("updated_at"), datetime)]
        mark = (
            json.dumps(
                {"updated_at": dated[-1]["updated_at"].isoformat(), "_id": str(dated[-1]["_id"])}
            )
            if dated
            else None
        )
        load_id = new_load_id()
        with warehouse.transaction():
            written = (
                warehouse.append_arrow(spec.table, to_arrow(rows, spec, batch_id, load_id))
                if rows
                else 0
            )
            if bad:
                warehouse.append_arrow(QUARANTINE_TABLE, quarantine_table(batch_id, "mongo", bad))
            if mark is not None:
                warehouse.append_arrow(
                    LEDGER_TABLE,
                    ledger_row(
                        load_id=load_id,
                        batch_id=batch_id,
                        source="mongo",
                        target_table=spec.table,
                        object_key=key,
                        object_version=mark,
                        status="loaded",
                        row_count=written,
                        checksum=checksum,
                    ),
                )
        report.add_rows(spec.table, written)
        report.quarantined.extend(bad)
        if progress:
            progress(
                f"loaded {written} {spec.collection} documents"
                + (f", {len(bad)} quarantined" if bad else "")
            )
    report.objects_loaded += 1
    return report


def backfill_collection(
    warehouse: Warehouse,
    db: Any,
    spec: CollectionSpec,
    *,
    start: datetime,
    end: datetime,
    batch_id: str,
    chunk_size: int = 20_000,
    progress: Callable[[str], None] | None = None,
) -> LoadReport:
    """Re-extract the documents with ``start <= updated_at < end`` in one transaction.

    Each document version found again (same ``_id`` and ``updated_at``) replaces the raw rows
    that version loaded before (duplicates included). MongoDB keeps only the current version
    of a document, so raw rows of versions it has since replaced cannot be re-extracted and
    are kept. Documents beyond the collection's watermark are left to the next incremental
    run (loading them here would load them twice)."""
    ensure_bookkeeping(warehouse)
    ensure_table(warehouse, spec.table, spec.schema)
    key = f"mongo://{db.name}/{spec.collection}"
    report = LoadReport(batch_id)
    mark_at, mark_id = _watermark(warehouse, key)
    if mark_at is None:
        return report  # nothing loaded yet: the incremental run loads everything
    scratch = f"{spec.table}__backfill_{batch_id.replace('-', '_').lower()}"
    query = {"updated_at": {"$gte": start, "$lt": end}}
    cursor = db[spec.collection].find(query).sort([("updated_at", 1), ("_id", 1)]).batch_size(5_000)

    def eligible() -> Iterator[dict[str, Any]]:
        for doc in cursor:
            at = doc.get("updated_at")
            if isinstance(at, datetime) and (at, str(doc["_id"])) > (mark_at, mark_id):
                return  # sorted: the rest is beyond the watermark too
            yield doc

    columns = ", ".join(f.name for f in spec.schema)
    load_id = new_load_id()  # the window's ledger row
    written = quarantined = documents = 0
    digest = hashlib.sha256()
    target, source = qualified(spec.table), qualified(scratch)
    warehouse.execute(f"drop table if exists {source}")
    warehouse.create_table(scratch, spec.schema)
    try:
        with warehouse.transaction():
            lock = getattr(warehouse, "advisory_lock", None)
            if lock is not None:
                lock(key)
            for chunk in _chunks(eligible(), chunk_size):
                rows, bad, checksum = _chunk_rows(chunk, spec, key)
                digest.update(checksum.encode())
                documents += len(chunk)
                if rows:
                    written += warehouse.append_arrow(
                        scratch, to_arrow(rows, spec, batch_id, load_id)
                    )
                if bad:
                    warehouse.append_arrow(
                        QUARANTINE_TABLE, quarantine_table(batch_id, "mongo", bad)
                    )
                    report.quarantined.extend(bad)
                    quarantined += len(bad)
            # the versions found again replace what they loaded before (duplicates included)
            warehouse.execute(
                f"delete from {target} as t where t.updated_at >= ? and t.updated_at < ? "
                f"and exists (select 1 from {source} as s where s._id = t._id "
                "and s.updated_at = t.updated_at)",
                [start, end],
            )
            warehouse.execute(f"insert into {target} ({columns}) select {columns} from {source}")
            window = json.dumps({"backfill": [start.isoformat(), end.isoformat()]})
            warehouse.append_arrow(
                LEDGER_TABLE,
                ledger_row(
                    load_id=load_id,
                    batch_id=batch_id,
                    source="mongo",
                    target_table=spec.table,
                    object_key=key,
                    object_version=window,
                    status="backfill",
                    row_count=written,
                    checksum=f"sha256:{digest.hexdigest()}",
                ),
            )
    finally:
        warehouse.execute(f"drop table if exists {source}")
    report.objects_loaded += 1
    report.add_rows(spec.table, written)
    if progress:
        progress(
            f"backfill: {spec.collection} {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}: "
            f"{documents} document versions re-extracted, {written} rows replace what they "
            "loaded before" + (f", {quarantined} quarantined" if quarantined else "")
        )
    return report
