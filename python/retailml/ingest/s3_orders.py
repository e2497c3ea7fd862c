"""Order-line exports on S3 (Parquet or gzipped JSON Lines) into ``raw.order_lines``.

Each object is loaded once, keyed by bucket, key and ETag: its rows and its ledger row commit
in one transaction. A re-uploaded object (new ETag) replaces what the old version loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Callable

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ..sources.object_store import ObjectInfo, ObjectStore
from ..warehouse.base import Warehouse
from .ledger import (
    LEDGER_TABLE,
    QUARANTINE_TABLE,
    LoadReport,
    QuarantinedRecord,
    ensure_bookkeeping,
    ledger_row,
    quarantine_table,
    utcnow,
)

TARGET_TABLE = "raw.order_lines"

ORDER_LINE_SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("line_number", pa.int64()),
        ("customer_id", pa.string()),
        ("product_id", pa.string()),
        ("quantity", pa.int64()),
        ("unit_price", pa.float64()),
        ("discount_amount", pa.float64()),
        ("currency", pa.string()),
        ("channel", pa.string()),
        ("ordered_at", pa.timestamp("us")),
        ("exported_at", pa.timestamp("us")),
    ]
)
METADATA_SCHEMA = pa.schema(
    [
        ("_batch_id", pa.string()),
        ("_source_object", pa.string()),
        ("_source_etag", pa.string()),
        ("_extracted_at", pa.timestamp("us", tz="UTC")),
    ]
)
RAW_SCHEMA = pa.schema(list(ORDER_LINE_SCHEMA) + list(METADATA_SCHEMA))


class BadObjectError(ValueError):
    """The object cannot be read at all (corrupt file, unknown format)."""


def object_format(key: str) -> str:
    if key.endswith(".parquet"):
        return "parquet"
    if key.endswith(".jsonl.gz"):
        return "jsonl.gz"
    raise BadObjectError(f"unknown file format for {key!r} (expected .parquet or .jsonl.gz)")


def conform(table: pa.Table) -> pa.Table:
    """Cast to the contract's column types; missing columns become null, extra ones stay."""
    columns, fields = [], []
    for target in ORDER_LINE_SCHEMA:
        if target.name in table.column_names:
            column = table.column(target.name)
            try:
                column = column.cast(target.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BadObjectError(
                    f"column {target.name!r} has type {column.type}, expected {target.type}: {exc}"
                ) from exc
        else:
            column = pa.nulls(table.num_rows, target.type)
        columns.append(column)
        fields.append(target)
    for name in table.column_names:
        if name not in ORDER_LINE_SCHEMA.names and not name.startswith("_"):
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def parse_object(key: str, body: bytes) -> tuple[pa.Table, list[QuarantinedRecord]]:
    """Parse one export file; return the good rows and the quarantined records."""
    fmt = object_format(key)
    if fmt == "parquet":
        try:
            return conform(pq.read_table(io.BytesIO(body))), []
        except (pa.ArrowInvalid, OSError) as exc:
            raise BadObjectError(f"corrupt Parquet file: {exc}") from exc
    try:
        text = gzip.decompress(body)
    except (OSError, EOFError) as exc:
        raise BadObjectError(f"corrupt gzip stream: {exc}") from exc
    options = pajson.ParseOptions(
        explicit_schema=ORDER_LINE_SCHEMA, unexpected_field_behavior="infer"
    )
    try:
        return conform(pajson.read_json(io.BytesIO(text), parse_options=options)), []
    except pa.ArrowInvalid:
        return _parse_lines_one_by_one(key, text, options)


def _parse_lines_one_by_one(
    key: str, text: bytes, options: pajson.ParseOptions
) -> tuple[pa.Table, list[QuarantinedRecord]]:
    """Slow path for a file with bad lines: keep every good line, quarantine the rest."""
    good: list[bytes] = []
    bad: list[QuarantinedRecord] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
            pajson.read_json(io.BytesIO(line), parse_options=options)
        except (ValueError, pa.ArrowInvalid) as exc:
            bad.append(
                QuarantinedRecord(
                    f"{key}#line={number}", str(exc), line.decode("utf-8", "replace")[:10_000]
                )
            )
            continue
        good.append(line)
    if not good:
        return conform(ORDER_LINE_SCHEMA.empty_table()), bad
    table = pajson.read_json(io.BytesIO(b"\n".join(good)), parse_options=options)
    return conform(table), bad


def with_metadata(table: pa.Table, *, batch_id: str, uri: str, etag: str) -> pa.Table:
    n = table.num_rows
    extracted_at = utcnow()
    for name, value, type_ in (
        ("_batch_id", batch_id, pa.string()),
        ("_source_object", uri, pa.string()),
        ("_source_etag", etag, pa.string()),
        ("_extracted_at", extracted_at, pa.timestamp("us", tz="UTC")),
    ):
        table = table.append_column(pa.field(name, type_), pa.repeat(pa.scalar(value, type_), n))
    return table


def _loaded_versions(warehouse: Warehouse, bucket: str) -> dict[str, str]:
    rows = warehouse.query_arrow(
        f"select object_key, object_version from {LEDGER_TABLE} "
        "where source = 's3' and object_key like ? order by loaded_at",
        [f"s3://{bucket}/%"],
    ).to_pylist()
    return {r["object_key"]: r["object_version"] for r in rows}


def ingest_s3_orders(
    warehouse: Warehouse,
    objects: ObjectStore,
    *,
    prefix: str,
    batch_id: str,
    keys: Callable[[ObjectInfo], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadReport:
    """Load every new or changed export object under ``prefix``."""
    ensure_bookkeeping(warehouse)
    warehouse.create_table(TARGET_TABLE, RAW_SCHEMA)
    report = LoadReport(batch_id)
    loaded = _loaded_versions(warehouse, objects.bucket)
    known_columns = set(warehouse.columns(TARGET_TABLE))
    for info in objects.list(prefix):
        if keys is not None and not keys(info):
            continue
        uri = f"s3://{objects.bucket}/{info.key}"
        if loaded.get(uri) == info.etag:
            report.objects_skipped += 1
            continue
        body = objects.get(info.key)
        checksum = hashlib.sha256(body).hexdigest()
        try:
            rows, bad = parse_object(info.key, body)
        except BadObjectError as exc:
            rows, bad = None, [QuarantinedRecord(uri, str(exc))]
        with warehouse.transaction():
            if uri in loaded:  # a re-uploaded object replaces what its old version loaded
                warehouse.execute(f"delete from {TARGET_TABLE} where _source_object = ?", [uri])
            written = 0
            if rows is not None and rows.num_rows:
                rows = with_metadata(rows, batch_id=batch_id, uri=uri, etag=info.etag)
                extra = [f for f in rows.schema if f.name not in known_columns]
                if extra:  # schema drift: a new column in the export becomes a new raw column
                    warehouse.add_columns(TARGET_TABLE, pa.schema(extra))
                    known_columns.update(f.name for f in extra)
                written = warehouse.append_arrow(TARGET_TABLE, rows)
            if bad:
                warehouse.append_arrow(QUARANTINE_TABLE, quarantine_table(batch_id, "s3", bad))
            warehouse.append_arrow(
                LEDGER_TABLE,
                ledger_row(
                    batch_id=batch_id,
                    source="s3",
                    target_table=TARGET_TABLE,
                    object_key=uri,
                    object_version=info.etag,
                    status="loaded" if rows is not None else "quarantined",
                    row_count=written,
                    checksum=checksum,
                ),
            )
        report.objects_loaded += 1
        report.add_rows(TARGET_TABLE, written)
        report.quarantined.extend(bad)
        if progress:
            progress(
                f"loaded {info.key}: {written} rows" + (f", {len(bad)} quarantined" if bad else "")
            )
    return report
