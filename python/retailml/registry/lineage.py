"""Lineage: from a prediction row back to the model version, its training data, the dbt
models that built that data and the raw batches that fed them.

At training time (:func:`training_lineage`) the trainer records

* in the version's training fingerprint: the dbt manifest's sha256 and ``generated_at``,
  the training table's dbt model and everything upstream of it (models, sources and the
  raw tables behind the sources), and a summary of the raw batches;
* in ``mlops.model_training_batches`` (:func:`record_training_batches`): one row per load
  ledger entry (``raw._load_ledger``) whose rows were in those raw tables when dbt built the
  marts (loaded before the manifest was generated; see :func:`raw_batches` for which
  entries still have rows). BI can join it with the ledger, the registry and the scores;
  its ``load_id`` is the ``_load_id`` of the raw rows that load wrote (batch id, source
  object or watermark and ETag are on the same row; ``_extracted_at`` is on the raw rows).

:func:`trace_prediction` walks the chain back from any table with ``model_name`` and
``model_version`` columns (``mlops.churn_scores``, ``mlops.demand_forecasts``,
``mlops.prediction_log``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..warehouse.base import Warehouse, ensure_table, quote_ident
from .registry import ModelRegistry, ModelVersion, RegistryError, file_sha256

LEDGER_TABLE = "raw._load_ledger"
TRAINING_BATCHES_TABLE = "mlops.model_training_batches"
TRAINING_BATCHES_SCHEMA = pa.schema(
    [
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        # the load: raw rows whose ``_load_id`` is this are the rows it wrote
        ("load_id", pa.int64()),
        ("batch_id", pa.string()),
        ("source", pa.string()),
        ("target_table", pa.string()),
        ("object_key", pa.string()),
        ("object_version", pa.string()),
        ("row_count", pa.int64()),
        ("loaded_at", pa.timestamp("us", tz="UTC")),
    ]
)
_LEDGER_COLUMNS = [f.name for f in TRAINING_BATCHES_SCHEMA][2:]
_UPSTREAM_TYPES = ("model", "seed", "snapshot", "source")


class LineageError(RegistryError):
    """The lineage cannot be resolved; the message says which link is missing."""


# -- dbt ------------------------------------------------------------------------------------
def _relation(node: Mapping[str, Any]) -> str:
    name = node.get("alias") or node.get("identifier") or node.get("name")
    return f"{node.get('schema')}.{name}"


def manifest_lineage(manifest_path: Path, table: str) -> dict[str, Any]:
    """The dbt lineage of warehouse ``table`` (``schema.name``) from a ``manifest.json``:
    its model, every upstream model, seed and snapshot, the sources and their relations,
    the macros the model calls, and the manifest's sha256 and ``generated_at``."""
    path = Path(manifest_path)
    manifest = json.loads(path.read_text())
    nodes: dict[str, Any] = {**manifest.get("nodes", {}), **manifest.get("sources", {})}
    schema, _, name = table.rpartition(".")
    models = [
        (uid, n)
        for uid, n in nodes.items()
        if n.get("resource_type") == "model" and (n.get("alias") or n.get("name")) == name
    ]
    exact = [(uid, n) for uid, n in models if n.get("schema") == schema]
    matches = exact or models
    if len(matches) != 1:
        raise LineageError(
            f"{path} has {len(matches)} dbt models for {table}: "
            f"{[uid for uid, _ in matches] or 'none'}"
        )
    model_id, model = matches[0]
    upstream: set[str] = set()
    stack = list(model.get("depends_on", {}).get("nodes", []))
    while stack:
        uid = stack.pop()
        if uid in upstream or uid not in nodes:
            continue
        if nodes[uid].get("resource_type") not in _UPSTREAM_TYPES:
            continue
        upstream.add(uid)
        stack.extend(nodes[uid].get("depends_on", {}).get("nodes", []))
    sources = sorted(u for u in upstream if nodes[u].get("resource_type") == "source")
    return {
        "manifest_sha256": file_sha256(path),
        "generated_at": (manifest.get("metadata") or {}).get("generated_at"),
        "model": model_id,
        "relation": _relation(model),
        "macros": sorted(model.get("depends_on", {}).get("macros", [])),
        "upstream": sorted(u for u in upstream if u not in sources),
        "sources": sources,
        "raw_tables": sorted({_relation(nodes[u]) for u in sources}),
    }


# -- raw batches ----------------------------------------------------------------------------
def raw_batches(
    warehouse: Warehouse,
    raw_tables: Sequence[str] | None = None,
    *,
    loaded_before: datetime | None = None,
) -> pa.Table:
    """Ledger rows whose data is in ``raw_tables`` (all raw tables if ``None``), as of
    ``loaded_before`` (if given).

    An S3 object's rows are those of its newest ledger entry, if that entry is ``loaded``
    (any later entry, ``loaded``, ``quarantined`` or ``removed``, deleted the earlier rows).
    MongoDB entries add rows (every extracted version is kept): all ``loaded`` and
    ``backfill`` chunks count.
    """
    schema = TRAINING_BATCHES_SCHEMA.remove(0).remove(0)
    if not warehouse.table_exists(LEDGER_TABLE):
        return schema.empty_table()
    cols = ", ".join(quote_ident(c) for c in _LEDGER_COLUMNS)
    ledger = LEDGER_TABLE
    if "load_id" not in warehouse.columns(LEDGER_TABLE):  # written by an older loader
        ledger = f"(select cast(null as bigint) as load_id, * from {LEDGER_TABLE}) as ledger"
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if raw_tables:
        where.append(f"target_table in ({', '.join('?' * len(raw_tables))})")
        params.extend(raw_tables)
    if loaded_before is not None:
        where.append("loaded_at <= ?")
        params.append(loaded_before)
    sql = (
        f"select {cols} from (select {cols}, status, row_number() over ("
        "partition by target_table, object_key order by loaded_at desc, batch_id desc) as rn "
        f"from {ledger} where {' and '.join(where)}) as ranked "
        "where (source = 's3' and rn = 1 and status = 'loaded') "
        "or (source <> 's3' and status in ('loaded', 'backfill')) order by loaded_at, object_key"
    )
    table = warehouse.query_arrow(sql, params or None)
    return table.select(schema.names).cast(schema)


def training_lineage(
    warehouse: Warehouse, table: str, manifest_path: Path | None
) -> tuple[dict[str, Any], pa.Table]:
    """(fingerprint entries, ledger rows) of a model trained on ``table``.

    Without a manifest (marts not built by dbt, e.g. tests) the dbt part is ``None`` and
    every loaded batch of every raw table counts.
    """
    dbt: dict[str, Any] | None = None
    loaded_before: datetime | None = None
    raw_tables: list[str] | None = None
    if manifest_path is not None and Path(manifest_path).is_file():
        dbt = manifest_lineage(Path(manifest_path), table)
        raw_tables = dbt["raw_tables"] or None
        if dbt.get("generated_at"):
            loaded_before = datetime.fromisoformat(str(dbt["generated_at"]).replace("Z", "+00:00"))
    batches = raw_batches(warehouse, raw_tables, loaded_before=loaded_before)
    batch_ids = sorted(set(batches.column("batch_id").to_pylist()))
    digest = hashlib.sha256()
    for row in sorted(
        zip(
            batches.column("batch_id").to_pylist(),
            batches.column("object_key").to_pylist(),
            batches.column("object_version").to_pylist(),
            strict=True,
        ),
        key=lambda r: tuple(str(v) for v in r),
    ):
        digest.update(json.dumps(row).encode())
    fingerprint = {
        "dbt_manifest_sha256": dbt["manifest_sha256"] if dbt else None,
        "dbt": dbt,
        "raw_batches": {
            "table": TRAINING_BATCHES_TABLE,
            "ledger_entries": batches.num_rows,
            "batch_ids": batch_ids,
            "sha256": digest.hexdigest(),
            "loaded_before": loaded_before.isoformat() if loaded_before else None,
        },
    }
    return fingerprint, batches


def record_training_batches(
    warehouse: Warehouse, model_name: str, model_version: int, batches: pa.Table
) -> int:
    """Write a version's ledger rows to ``mlops.model_training_batches`` (replacing any)."""
    ensure_table(warehouse, TRAINING_BATCHES_TABLE, TRAINING_BATCHES_SCHEMA)  # adds load ids
    n = batches.num_rows
    table = pa.Table.from_arrays(
        [pa.array([model_name] * n, pa.string()), pa.array([model_version] * n, pa.int64())]
        + [batches.column(c) for c in _LEDGER_COLUMNS],
        schema=TRAINING_BATCHES_SCHEMA,
    )
    with warehouse.transaction():
        warehouse.execute(
            f"delete from {TRAINING_BATCHES_TABLE} where model_name = ? and model_version = ?",
            [model_name, model_version],
        )
        if n:
            warehouse.append_arrow(TRAINING_BATCHES_TABLE, table)
    return n


# -- tracing back ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Lineage:
    """One prediction row's provenance."""

    prediction: dict[str, Any]
    model: ModelVersion
    training_table: str | None
    training_query: str | None
    training_rows: int | None
    training_content_sha256: str | None
    dbt_manifest_sha256: str | None
    dbt_models: list[str] = field(default_factory=list)
    dbt_sources: list[str] = field(default_factory=list)
    raw_batch_ids: list[str] = field(default_factory=list)
    raw_objects: list[dict[str, Any]] = field(default_factory=list)
    manifest_is_current: bool | None = None

    def summary(self) -> str:
        return (
            f"{self.model.name} v{self.model.version} <- {self.training_rows} rows of "
            f"{self.training_table} (sha256 {str(self.training_content_sha256)[:12]}) <- "
            f"{len(self.dbt_models)} dbt nodes, {len(self.dbt_sources)} sources "
            f"(manifest {str(self.dbt_manifest_sha256)[:12]}) <- "
            f"{len(self.raw_objects)} raw loads in batches {self.raw_batch_ids}"
        )


def trace_model(
    warehouse: Warehouse,
    registry: ModelRegistry,
    name: str,
    version: int,
    *,
    prediction: Mapping[str, Any] | None = None,
    current_manifest: Path | None = None,
) -> Lineage:
    """The lineage of a model version (and, for the record, the prediction it explains)."""
    model = registry.get(name, version)
    fingerprint = model.training_fingerprint or {}
    dbt = fingerprint.get("dbt") or {}
    objects: list[dict[str, Any]] = []
    if warehouse.table_exists(TRAINING_BATCHES_TABLE):
        objects = warehouse.query_arrow(
            f"select {', '.join(_LEDGER_COLUMNS)} from {TRAINING_BATCHES_TABLE} "
            "where model_name = ? and model_version = ? order by loaded_at, object_key",
            [name, int(version)],
        ).to_pylist()
    manifest_sha = fingerprint.get("dbt_manifest_sha256")
    is_current = None
    if current_manifest is not None and Path(current_manifest).is_file() and manifest_sha:
        is_current = file_sha256(Path(current_manifest)) == manifest_sha
    return Lineage(
        prediction=dict(prediction or {}),
        model=model,
        training_table=fingerprint.get("table"),
        training_query=fingerprint.get("query"),
        training_rows=fingerprint.get("row_count"),
        training_content_sha256=fingerprint.get("content_sha256"),
        dbt_manifest_sha256=manifest_sha,
        dbt_models=[dbt["model"], *dbt.get("upstream", [])] if dbt.get("model") else [],
        dbt_sources=list(dbt.get("sources", [])),
        raw_batch_ids=sorted({str(o["batch_id"]) for o in objects}),
        raw_objects=objects,
        manifest_is_current=is_current,
    )


def trace_prediction(
    warehouse: Warehouse,
    registry: ModelRegistry,
    table: str,
    where: Mapping[str, Any],
    *,
    current_manifest: Path | None = None,
) -> list[Lineage]:
    """Lineage of every row of ``table`` matching ``where`` (column -> value), e.g.
    ``trace_prediction(wh, reg, "mlops.churn_scores", {"customer_id": "C0000042"})``."""
    if not where:
        raise LineageError("trace_prediction needs at least one column = value condition")
    if not warehouse.table_exists(table):
        raise LineageError(f"{table} does not exist")
    columns = warehouse.columns(table)
    unknown = [c for c in [*where, "model_name", "model_version"] if c not in columns]
    if unknown:
        raise LineageError(f"{table} has no columns {unknown}")
    condition = " and ".join(f"{quote_ident(c)} = ?" for c in where)
    rows = warehouse.query_arrow(
        f"select * from {table} where {condition}", list(where.values())
    ).to_pylist()
    if not rows:
        raise LineageError(f"no row of {table} matches {dict(where)}")
    return [
        trace_model(
            warehouse,
            registry,
            str(row["model_name"]),
            int(row["model_version"]),
            prediction=row,
            current_manifest=current_manifest,
        )
        for row in rows
    ]
