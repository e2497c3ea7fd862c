"""Lineage links on an embedded DuckDB warehouse: a dbt manifest's upstream graph, the load
ledger rows behind the raw tables, and the walk back from a prediction row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from sklearn.dummy import DummyClassifier

from retailml.ingest.ledger import LEDGER_SCHEMA, LEDGER_TABLE
from retailml.registry import (
    TRAINING_BATCHES_TABLE,
    LineageError,
    LocalArtifactStore,
    ModelRegistry,
    file_sha256,
    manifest_lineage,
    record_training_batches,
    trace_prediction,
    training_lineage,
)
from retailml.registry.lineage import raw_batches
from retailml.warehouse.duckdb import DuckDBWarehouse

T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


def _node(kind: str, schema: str, name: str, parents: list[str]) -> dict:
    node = {"resource_type": kind, "schema": schema, "name": name, "alias": name}
    node["depends_on"] = {"nodes": parents, "macros": ["macro.shop.helper"]}
    return node


def _source(schema: str, name: str) -> dict:
    return {"resource_type": "source", "schema": schema, "name": name, "identifier": name}


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    nodes = {
        "model.shop.ml_training": _node(
            "model", "marts", "ml_training", ["model.shop.fct_lines", "model.shop.dim_customers"]
        ),
        "model.shop.fct_lines": _node("model", "core", "fct_lines", ["model.shop.stg_lines"]),
        "model.shop.stg_lines": _node("model", "staging", "stg_lines", ["source.shop.raw.lines"]),
        "model.shop.dim_customers": _node(
            "model", "core", "dim_customers", ["source.shop.raw.customers", "seed.shop.countries"]
        ),
        "seed.shop.countries": _node("seed", "core", "countries", []),
        "model.shop.unrelated": _node("model", "marts", "unrelated", ["source.shop.raw.other"]),
        "test.shop.not_null": _node("test", "core", "not_null", ["model.shop.fct_lines"]),
    }
    sources = {
        "source.shop.raw.lines": _source("raw", "order_lines"),
        "source.shop.raw.customers": _source("raw", "customers"),
        "source.shop.raw.other": _source("raw", "other"),
    }
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps(
            {
                "metadata": {"generated_at": "2026-01-05T08:00:00Z"},
                "nodes": nodes,
                "sources": sources,
            }
        )
    )
    return path


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    yield wh
    wh.close()


def _ledger(warehouse: DuckDBWarehouse) -> None:
    """Object A loaded, then replaced by a new ETag; B quarantined; D loaded, then an
    unreadable new ETag (quarantined: its old rows deleted); E loaded, then removed by a
    backfill; Mongo chunks (one a backfill); a batch loaded after the dbt build; a table no
    model reads."""
    rows = [
        ("b1", "s3", "raw.order_lines", "s3://l/a", "etag1", "loaded", 10, 0),
        ("b1", "s3", "raw.order_lines", "s3://l/b", "etagb", "quarantined", 0, 0),
        ("b1", "s3", "raw.order_lines", "s3://l/d", "etagd1", "loaded", 4, 0),
        ("b1", "s3", "raw.order_lines", "s3://l/e", "etage", "loaded", 4, 0),
        ("b1", "mongo", "raw.customers", "mongo://shop/customers", "w1", "loaded", 5, 0),
        ("b2", "s3", "raw.order_lines", "s3://l/a", "etag2", "loaded", 11, 1),
        ("b2", "s3", "raw.order_lines", "s3://l/d", "etagd2", "quarantined", 0, 1),
        ("b2", "s3", "raw.order_lines", "s3://l/e", "etage", "removed", 0, 1),
        ("b2", "mongo", "raw.customers", "mongo://shop/customers", "w2", "loaded", 2, 1),
        ("b2", "mongo", "raw.customers", "mongo://shop/customers", "w0", "backfill", 1, 1),
        ("b2", "s3", "raw.other", "s3://l/o", "etago", "loaded", 3, 1),
        ("b3", "s3", "raw.order_lines", "s3://l/c", "etagc", "loaded", 7, 4),
    ]
    table = pa.Table.from_pylist(
        [
            {"load_id": 101 + i}
            | dict(zip(LEDGER_SCHEMA.names[1:-2], r[:-1], strict=True))
            | {"checksum": "x", "loaded_at": T0 + timedelta(hours=r[-1])}
            for i, r in enumerate(rows)
        ],
        schema=LEDGER_SCHEMA,
    )
    warehouse.create_table(LEDGER_TABLE, LEDGER_SCHEMA)
    warehouse.append_arrow(LEDGER_TABLE, table)
    # raw rows carry their load's id: 11 lines of A's second version (load 106), 7 of C's
    warehouse.execute("create schema if not exists raw")
    warehouse.execute(
        "create table raw.order_lines as select 'O' || i as order_id, "
        "case when i < 11 then 106 else 112 end as _load_id from range(18) as t(i)"
    )


def test_manifest_lineage_walks_every_upstream_node(manifest: Path) -> None:
    lineage = manifest_lineage(manifest, "marts.ml_training")
    assert lineage["model"] == "model.shop.ml_training"
    assert lineage["upstream"] == [
        "model.shop.dim_customers",
        "model.shop.fct_lines",
        "model.shop.stg_lines",
        "seed.shop.countries",
    ]
    assert lineage["sources"] == ["source.shop.raw.customers", "source.shop.raw.lines"]
    assert lineage["raw_tables"] == ["raw.customers", "raw.order_lines"]
    assert lineage["manifest_sha256"] == file_sha256(manifest)
    assert lineage["generated_at"] == "2026-01-05T08:00:00Z"
    with pytest.raises(LineageError, match="0 dbt models"):
        manifest_lineage(manifest, "marts.nothing")


def test_raw_batches_are_the_ledger_rows_whose_data_is_in_the_tables(
    warehouse: DuckDBWarehouse,
) -> None:
    assert raw_batches(warehouse).num_rows == 0  # no ledger yet: nothing, no error
    _ledger(warehouse)
    cut = T0 + timedelta(hours=2)
    rows = raw_batches(warehouse, ["raw.order_lines", "raw.customers"], loaded_before=cut)
    pairs = zip(
        rows.column("batch_id").to_pylist(), rows.column("object_version").to_pylist(), strict=True
    )
    got = sorted(pairs)
    # etag1 was replaced by etag2; D's and E's rows are gone; the quarantined object, the
    # other table and the batch loaded after the build are not behind the model's data;
    # every Mongo chunk is.
    assert got == [("b1", "w1"), ("b2", "etag2"), ("b2", "w0"), ("b2", "w2")]
    assert raw_batches(warehouse).num_rows == 6  # every table, any time


def test_a_prediction_walks_back_to_dbt_models_and_raw_batches(
    warehouse: DuckDBWarehouse, manifest: Path, tmp_path: Path
) -> None:
    _ledger(warehouse)
    registry = ModelRegistry(warehouse, LocalArtifactStore(tmp_path / "models"), code_version="t")
    lineage, batches = training_lineage(warehouse, "marts.ml_training", manifest)
    model = DummyClassifier().fit([[0], [1]], [0, 1])
    version = registry.register(
        "churn", model, kind="sklearn", params={}, metrics={},
        fingerprint={"table": "marts.ml_training", "query": "select ...", "row_count": 2,
                     "content_sha256": "c0ffee", **lineage},
    )  # fmt: skip
    assert record_training_batches(warehouse, "churn", version.version, batches) == 4
    warehouse.create_table(
        "mlops.churn_scores",
        pa.schema(
            [("customer_id", pa.string()), ("as_of_date", pa.date32()),
             ("churn_probability", pa.float64()), ("model_name", pa.string()),
             ("model_version", pa.int64())]
        ),
    )  # fmt: skip
    warehouse.execute(
        "insert into mlops.churn_scores values (?, ?, ?, ?, ?)",
        ["C0000042", date(2026, 1, 6), 0.3, "churn", version.version],
    )

    [trace] = trace_prediction(
        warehouse, registry, "mlops.churn_scores", {"customer_id": "C0000042"},
        current_manifest=manifest,
    )  # fmt: skip
    assert trace.prediction["churn_probability"] == 0.3
    assert trace.model.version == version.version
    assert trace.training_content_sha256 == "c0ffee" and trace.training_rows == 2
    assert trace.dbt_manifest_sha256 == file_sha256(manifest) and trace.manifest_is_current
    assert trace.dbt_models[0] == "model.shop.ml_training"
    assert "model.shop.stg_lines" in trace.dbt_models
    assert trace.dbt_sources == ["source.shop.raw.customers", "source.shop.raw.lines"]
    assert trace.raw_batch_ids == ["b1", "b2"]
    assert {o["object_version"] for o in trace.raw_objects} == {"w1", "etag2", "w2", "w0"}
    assert version.training_fingerprint["raw_batches"]["batch_ids"] == ["b1", "b2"]
    assert "C0000042" not in trace.summary() and "b1" in trace.summary()

    # BI can make the same walk in SQL
    joined = warehouse.query_arrow(
        f"select distinct b.batch_id, l.status from mlops.churn_scores s "
        f"join mlops.model_registry r on r.name = s.model_name and r.version = s.model_version "
        f"join {TRAINING_BATCHES_TABLE} b "
        f"on b.model_name = r.name and b.model_version = r.version "
        f"join {LEDGER_TABLE} l on l.batch_id = b.batch_id and l.object_key = b.object_key "
        f"and l.object_version = b.object_version order by 1, 2"
    ).to_pylist()
    assert joined == [
        {"batch_id": "b1", "status": "loaded"},
        {"batch_id": "b2", "status": "backfill"},
        {"batch_id": "b2", "status": "loaded"},
    ]
    # ... down to the raw rows: those the training batches' loads wrote (not C's: after)
    lines = warehouse.query_arrow(
        f"select b.object_key, b.object_version, count(*) as n from mlops.churn_scores s "
        f"join {TRAINING_BATCHES_TABLE} b "
        f"on b.model_name = s.model_name and b.model_version = s.model_version "
        f"join raw.order_lines o on o._load_id = b.load_id group by 1, 2"
    ).to_pylist()
    assert lines == [{"object_key": "s3://l/a", "object_version": "etag2", "n": 11}]

    manifest.write_text(manifest.read_text().replace("order_lines", "order_lines_v2"))
    [later] = trace_prediction(
        warehouse, registry, "mlops.churn_scores", {"customer_id": "C0000042"},
        current_manifest=manifest,
    )  # fmt: skip
    assert later.manifest_is_current is False
    with pytest.raises(LineageError, match="no row"):
        trace_prediction(warehouse, registry, "mlops.churn_scores", {"customer_id": "nobody"})
    with pytest.raises(LineageError, match="no columns"):
        trace_prediction(warehouse, registry, "mlops.churn_scores", {"nope": 1})
