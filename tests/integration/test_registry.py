"""The model registry against real storage: a folder, the S3 protocol (the local moto
server), DuckDB and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.fernet import Fernet
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from retailml import runtime
from retailml.config import Settings
from retailml.registry import (
    REGISTRY_TABLE,
    ArtifactIntegrityError,
    ArtifactStoreError,
    LocalArtifactStore,
    ModelNotFoundError,
    ModelRegistry,
    ObjectStoreArtifactStore,
    RegistryError,
    SerializationError,
    StatsmodelsBundle,
    StatsmodelsSpec,
    UntrustedArtifactError,
    open_artifact_store,
    sha256_hex,
)
from retailml.warehouse.base import Warehouse
from retailml.warehouse.duckdb import DuckDBWarehouse
from retailml.warehouse.postgres import PostgresWarehouse

X = np.random.default_rng(0).normal(size=(200, 3))
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
HOLDOUT = {"sha256": "h1", "rows": 50}


def _model(c: float = 1.0) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(C=c))]).fit(X, Y)


def _register(registry: ModelRegistry, auc: float, **metrics: Any) -> int:
    version = registry.register(
        "churn",
        _model(),
        kind="sklearn",
        params={"C": 1.0},
        metrics={"roc_auc": auc, "holdout": HOLDOUT, **metrics},
        fingerprint={
            "table": "marts.t", "query": "select 1", "row_count": 200, "content_sha256": "abc",
            "dbt_manifest_sha256": "m1",
        },
    )  # fmt: skip
    return version.version


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    yield wh
    wh.close()


@pytest.fixture
def registry(warehouse: DuckDBWarehouse, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(warehouse, LocalArtifactStore(tmp_path / "models"), code_version="t")


# -- artifact stores ----------------------------------------------------------------------
def test_local_store_round_trip_and_refuses_foreign_uris(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "models")
    uri = store.put("churn/abc.skops", b"bytes")
    assert uri.startswith("file://") and store.exists(uri)
    assert store.get(uri) == b"bytes"
    with pytest.raises(ArtifactStoreError):
        store.get((tmp_path / "elsewhere.skops").as_uri())
    with pytest.raises(ArtifactStoreError):
        store.put("../escape.skops", b"x")
    assert isinstance(open_artifact_store(str(tmp_path / "m")), LocalArtifactStore)


def test_object_store_artifacts_over_the_s3_protocol(settings: Settings) -> None:
    bucket_settings = settings.model_copy(update={"s3_bucket": f"{settings.s3_bucket}-models"})
    object_store = runtime.open_object_store(bucket_settings, create_bucket=True)
    store = open_artifact_store(f"s3://{object_store.bucket}/models", object_store=object_store)
    assert isinstance(store, ObjectStoreArtifactStore)
    uri = store.put("churn/abc.skops", b"model-bytes")
    assert uri == f"s3://{object_store.bucket}/models/churn/abc.skops"
    assert store.get(uri) == b"model-bytes" and store.exists(uri)
    with pytest.raises(ArtifactStoreError):
        store.get("s3://another-bucket/models/churn/abc.skops")
    # The runtime's way: built from settings, the bucket taken from the URI.
    via_settings = open_artifact_store(f"s3://{object_store.bucket}/models", settings=settings)
    assert via_settings.get(uri) == b"model-bytes"
    with pytest.raises(ArtifactStoreError, match="ObjectStore"):
        open_artifact_store("s3://bucket/models")


def test_registry_with_s3_artifacts_round_trips(settings: Settings, tmp_path: Path) -> None:
    object_store = runtime.open_object_store(
        settings.model_copy(update={"s3_bucket": f"{settings.s3_bucket}-reg"}), create_bucket=True
    )
    registry = ModelRegistry(
        DuckDBWarehouse(tmp_path / "wh.duckdb"), ObjectStoreArtifactStore(object_store, "models")
    )
    version = _register(registry, 0.8)
    loaded = registry.load("churn", version)
    assert loaded.version.artifact_uri.startswith(f"s3://{object_store.bucket}/models/churn/")
    np.testing.assert_allclose(loaded.model.predict_proba(X), _model().predict_proba(X))


# -- register, get, load ------------------------------------------------------------------
def test_register_get_load_round_trip(registry: ModelRegistry, warehouse: Warehouse) -> None:
    first = _register(registry, 0.70)
    second = _register(registry, 0.71)
    assert (first, second) == (1, 2)
    row = registry.get("churn", second)
    assert row.alias == "candidate" and row.kind == "sklearn"
    assert row.metrics["roc_auc"] == 0.71 and row.params == {"C": 1.0}
    assert row.training_fingerprint["content_sha256"] == "abc"
    assert row.code_version == "t" and len(row.artifact_sha256) == 64
    assert registry.get("churn", "latest").version == 2
    assert registry.get("churn", "candidate").version == 2
    loaded = registry.load("churn", first)
    assert loaded.version.version == 1
    np.testing.assert_allclose(loaded.model.predict_proba(X), _model().predict_proba(X))
    columns = set(warehouse.columns(REGISTRY_TABLE))
    assert {"training_fingerprint", "alias_reason", "artifact_sha256"} <= columns
    with pytest.raises(ModelNotFoundError, match="v2 candidate"):
        registry.get("churn", "production")
    # Every listed field is a column BI can query without JSON functions.
    rows = warehouse.query_arrow(
        f"select name, version, created_at, params, metrics, training_table, training_query, "
        f"training_row_count, training_content_sha256, dbt_manifest_sha256, code_version, "
        f"artifact_uri, artifact_sha256, alias from {REGISTRY_TABLE} "
        "where training_row_count = ? order by version",
        [200],
    ).to_pylist()
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[1]["training_query"] == "select 1" and rows[1]["training_table"] == "marts.t"
    assert rows[1]["training_content_sha256"] == "abc" and rows[1]["dbt_manifest_sha256"] == "m1"
    assert rows[1]["artifact_sha256"] == row.artifact_sha256 and rows[1]["alias"] == "candidate"


def test_reads_create_nothing(registry: ModelRegistry, warehouse: Warehouse) -> None:
    """Read-only consumers (serving) must be able to ask before anything was registered."""
    with pytest.raises(ModelNotFoundError, match="none registered"):
        registry.get("churn", "production")
    assert registry.list_versions("churn") == []
    assert not warehouse.table_exists(REGISTRY_TABLE)


def test_tampered_artifact_is_refused_before_deserialising(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    version = registry.get("churn", _register(registry, 0.7))
    path = Path(version.artifact_uri.removeprefix("file://"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        registry.load("churn", version.version)


def test_tampered_registry_row_is_refused(registry: ModelRegistry, warehouse: Warehouse) -> None:
    version = _register(registry, 0.7)
    warehouse.execute(
        f"update {REGISTRY_TABLE} set artifact_sha256 = ? where version = ?", ["0" * 64, version]
    )
    with pytest.raises(ArtifactIntegrityError):
        registry.load("churn", version)


def test_artifact_with_untrusted_types_is_refused(registry: ModelRegistry) -> None:
    hostile = Pipeline([("f", FunctionTransformer(os.system)), ("m", LogisticRegression())])
    version = registry.register(
        "hostile", hostile, kind="sklearn", params={}, metrics={}, fingerprint={}
    )
    with pytest.raises(UntrustedArtifactError, match="system"):
        registry.load("hostile", version.version)


def test_encrypted_artifacts(warehouse: Warehouse, tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    store = LocalArtifactStore(tmp_path / "models")
    encrypted = ModelRegistry(warehouse, store, encryption_key=key)
    version = _register(encrypted, 0.7)
    row = encrypted.get("churn", version)
    raw = Path(row.artifact_uri.removeprefix("file://")).read_bytes()
    assert row.artifact_uri.endswith(".skops.fernet") and not raw.startswith(b"PK")
    np.testing.assert_allclose(
        encrypted.load("churn", version).model.predict_proba(X), _model().predict_proba(X)
    )
    with pytest.raises(RegistryError, match="encrypted"):
        ModelRegistry(warehouse, store).load("churn", version)
    wrong = ModelRegistry(warehouse, store, encryption_key=Fernet.generate_key().decode())
    with pytest.raises(SerializationError, match="wrong encryption key"):
        wrong.load("churn", version)


def test_statsmodels_bundle_round_trip_forecasts_identically(registry: ModelRegistry) -> None:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    rng = np.random.default_rng(1)
    index = pd.date_range("2024-01-01", periods=120, freq="D")
    y = pd.Series(30 + 5 * np.sin(np.arange(120) * 2 * np.pi / 7) + rng.normal(0, 1, 120), index)
    kwargs = {"error": "add", "trend": None, "seasonal": "add", "seasonal_periods": 7}
    fitted = ETSModel(y, **kwargs).fit(disp=False)
    bundle = StatsmodelsBundle({"books": StatsmodelsSpec.from_results(fitted, kwargs)}, {"k": 1})
    version = registry.register(
        "demand", bundle, kind="statsmodels", params={}, metrics={}, fingerprint={}
    )
    loaded = registry.load("demand", version.version).model
    assert isinstance(loaded, StatsmodelsBundle) and loaded.extra == {"k": 1}
    np.testing.assert_allclose(loaded.results("books").forecast(14), fitted.forecast(14))
    with pytest.raises(RegistryError, match="StatsmodelsBundle"):
        registry.register(
            "demand", fitted, kind="statsmodels", params={}, metrics={}, fingerprint={}
        )


# -- promotion ----------------------------------------------------------------------------
def test_first_version_is_promoted(registry: ModelRegistry) -> None:
    decision = registry.promote("churn", _register(registry, 0.6), metric="roc_auc")
    assert decision.promoted and decision.production_version is None
    assert registry.get("churn", "production").version == 1


def test_worse_candidate_stays_candidate_with_the_reason(registry: ModelRegistry) -> None:
    registry.promote("churn", _register(registry, 0.80), metric="roc_auc")
    decision = registry.promote("churn", _register(registry, 0.75), metric="roc_auc")
    assert not decision.promoted
    assert (decision.candidate_value, decision.production_value) == (0.75, 0.80)
    row = registry.get("churn", 2)
    assert row.alias == "candidate" and "not better" in (row.alias_reason or "")
    assert registry.get("churn", "production").version == 1


def test_better_candidate_is_promoted_and_production_archived(registry: ModelRegistry) -> None:
    registry.promote("churn", _register(registry, 0.70), metric="roc_auc")
    decision = registry.promote("churn", _register(registry, 0.72), metric="roc_auc")
    assert decision.promoted and decision.production_version == 1
    assert registry.get("churn", "production").version == 2
    old = registry.get("churn", 1)
    assert old.alias == "archived" and "replaced by v2" in (old.alias_reason or "")


def test_margin_is_required(registry: ModelRegistry) -> None:
    registry.promote("churn", _register(registry, 0.70), metric="roc_auc")
    assert not registry.promote(
        "churn", _register(registry, 0.705), metric="roc_auc", margin=0.01
    ).promoted
    assert registry.promote(
        "churn", _register(registry, 0.72), metric="roc_auc", margin=0.01
    ).promoted


def test_lower_is_better_metrics(registry: ModelRegistry) -> None:
    registry.promote(
        "churn", _register(registry, 0.0, mase=0.9), metric="mase", higher_is_better=False
    )
    worse = registry.promote(
        "churn", _register(registry, 0.0, mase=1.1), metric="mase", higher_is_better=False
    )
    better = registry.promote(
        "churn", _register(registry, 0.0, mase=0.8), metric="mase", higher_is_better=False
    )
    assert (worse.promoted, better.promoted) == (False, True)


def test_comparison_uses_production_scored_on_the_candidates_holdout(
    registry: ModelRegistry,
) -> None:
    registry.promote("churn", _register(registry, 0.90), metric="roc_auc")
    # A different held-out set: production's own 0.90 is not comparable; its re-evaluation on
    # the candidate's held-out rows (0.60) is.
    other_holdout = {"sha256": "h2", "rows": 60}
    version = registry.register(
        "churn", _model(), kind="sklearn", params={}, fingerprint={},
        metrics={"roc_auc": 0.65, "holdout": other_holdout,
                 "champion_evaluations": {"1": {"roc_auc": 0.60}}},
    )  # fmt: skip
    decision = registry.promote("churn", version.version, metric="roc_auc")
    assert decision.promoted and decision.production_value == 0.60


def test_incomparable_candidate_is_not_promoted(registry: ModelRegistry) -> None:
    registry.promote("churn", _register(registry, 0.60), metric="roc_auc")
    version = registry.register(
        "churn", _model(), kind="sklearn", params={}, fingerprint={},
        metrics={"roc_auc": 0.99, "holdout": {"sha256": "different"}},
    )  # fmt: skip
    decision = registry.promote("churn", version.version, metric="roc_auc")
    assert not decision.promoted and "not comparable" in decision.reason
    assert registry.get("churn", "production").version == 1


def test_set_alias_rolls_back_production(registry: ModelRegistry) -> None:
    registry.promote("churn", _register(registry, 0.70), metric="roc_auc")
    registry.promote("churn", _register(registry, 0.75), metric="roc_auc")
    registry.set_alias("churn", 1, "production", "rollback: v2 misbehaves in serving")
    assert registry.get("churn", "production").version == 1
    assert registry.get("churn", 2).alias == "archived"
    assert [v.alias for v in registry.list_versions("churn")].count("production") == 1
    with pytest.raises(RegistryError):
        registry.promote("churn", 2, metric="roc_auc")  # archived, not a candidate


def test_names_and_aliases_are_validated(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError):
        registry.get("Churn; drop table x", "production")
    with pytest.raises(RegistryError):
        registry.get("churn", "staging")


# -- charts next to the artifact -----------------------------------------------------------
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def test_reports_are_stored_next_to_the_artifact_and_verified(registry: ModelRegistry) -> None:
    version = registry.register(
        "churn", _model(), kind="sklearn", params={}, metrics={}, fingerprint={},
        reports={"roc.png": PNG, "calibration.png": PNG[::-1]},
    )  # fmt: skip
    row = registry.get("churn", version.version)
    assert set(row.reports) == {"roc.png", "calibration.png"}
    artifact = Path(row.artifact_uri.removeprefix("file://"))
    roc = Path(row.reports["roc.png"]["uri"].removeprefix("file://"))
    assert roc.parent == artifact.parent / f"{row.artifact_sha256}-reports"
    assert registry.load_report("churn", "latest", "roc.png") == PNG
    assert row.reports["roc.png"]["sha256"] == sha256_hex(PNG)
    roc.write_bytes(PNG + b"tampered")
    with pytest.raises(ArtifactIntegrityError, match=r"roc\.png"):
        registry.load_report("churn", version.version, "roc.png")
    with pytest.raises(ModelNotFoundError, match="no report"):
        registry.load_report("churn", version.version, "pr.png")


def test_report_names_are_validated(registry: ModelRegistry) -> None:
    for bad in ("../escape.png", "roc.svg", "Roc.png"):
        with pytest.raises(RegistryError, match="report name"):
            registry.register(
                "churn", _model(), kind="sklearn", params={}, metrics={}, fingerprint={},
                reports={bad: PNG},
            )  # fmt: skip
    assert registry.list_versions("churn") == []


def test_a_registry_table_from_before_reports_is_upgraded(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Rows written by the first release (no ``reports`` column) still read, and the next
    registration adds the column."""
    warehouse.execute("create schema if not exists mlops")
    warehouse.execute(
        f"create table {REGISTRY_TABLE} (name text not null, version bigint not null, "
        "created_at timestamp with time zone not null, kind text not null, params text not null, "
        "metrics text not null, training_fingerprint text not null, code_version text not null, "
        "artifact_uri text not null, artifact_sha256 text not null, alias text not null, "
        "alias_reason text, primary key (name, version))"
    )
    old = ModelRegistry(warehouse, LocalArtifactStore(tmp_path / "models"), code_version="t")
    warehouse.execute(
        f"insert into {REGISTRY_TABLE} values ('churn', 1, now(), 'sklearn', '{{}}', '{{}}', "
        """'{"query": "select 0", "row_count": 7}', 'old', 'file:///nowhere', 'x', 'archived', """
        "null)"
    )
    assert old.get("churn", 1).reports == {}
    fresh = ModelRegistry(warehouse, LocalArtifactStore(tmp_path / "models"), code_version="t")
    version = fresh.register(
        "churn", _model(), kind="sklearn", params={}, metrics={}, fingerprint={},
        reports={"roc.png": PNG},
    )  # fmt: skip
    assert "reports" in warehouse.columns(REGISTRY_TABLE)
    assert version.version == 2 and set(version.reports) == {"roc.png"}
    assert fresh.get("churn", 1).reports == {}
    # the fingerprint columns were added and filled from the old row's JSON
    backfilled = warehouse.query_arrow(
        f"select training_query, training_row_count, training_content_sha256 "
        f"from {REGISTRY_TABLE} where version = 1"
    ).to_pylist()
    assert backfilled == [
        {"training_query": "select 0", "training_row_count": 7, "training_content_sha256": None}
    ]


# -- the fairness limit ------------------------------------------------------------------------
def _fairness(gap: float | None) -> dict[str, Any]:
    largest = None
    if gap is not None:
        largest = {
            "attribute": "country", "metric": "roc_auc", "value": gap,
            "highest": {"group": "NL", "value": 0.9}, "lowest": {"group": "FR", "value": 0.9 - gap},
        }  # fmt: skip
    return {"largest_gap": largest, "metric": "roc_auc"}


def test_fairness_limit_blocks_even_a_first_version(registry: ModelRegistry) -> None:
    version = _register(registry, 0.9, fairness=_fairness(0.12))
    decision = registry.promote("churn", version, metric="roc_auc", max_fairness_gap=0.1)
    assert not decision.promoted and decision.fairness_gap == pytest.approx(0.12)
    row = registry.get("churn", version)
    assert row.alias == "candidate"
    assert "fairness limit" in (row.alias_reason or "") and "NL vs FR" in row.alias_reason
    with pytest.raises(ModelNotFoundError):
        registry.get("churn", "production")


def test_fairness_limit_blocks_a_better_candidate(registry: ModelRegistry) -> None:
    registry.promote("churn", _register(registry, 0.70, fairness=_fairness(0.02)),
                     metric="roc_auc", max_fairness_gap=0.1)  # fmt: skip
    better = _register(registry, 0.95, fairness=_fairness(0.3))
    decision = registry.promote("churn", better, metric="roc_auc", max_fairness_gap=0.1)
    assert not decision.promoted and "exceeds 0.1" in decision.reason
    assert registry.get("churn", "production").version == 1


def test_fairness_within_the_limit_promotes_and_says_so(registry: ModelRegistry) -> None:
    first = _register(registry, 0.70, fairness=_fairness(0.04))
    decision = registry.promote("churn", first, metric="roc_auc", max_fairness_gap=0.05)
    assert decision.promoted and "within the limit 0.05" in decision.reason
    assert "fairness" in (registry.get("churn", first).alias_reason or "")
    # no limit: the gap is not looked at
    second = _register(registry, 0.80, fairness=_fairness(0.5))
    assert registry.promote("churn", second, metric="roc_auc").promoted


def test_fairness_limit_without_an_evaluation_blocks(registry: ModelRegistry) -> None:
    version = _register(registry, 0.9)
    decision = registry.promote("churn", version, metric="roc_auc", max_fairness_gap=0.1)
    assert not decision.promoted and "no fairness evaluation" in decision.reason
    # an evaluation with no comparable groups is not a reason to block
    version = _register(registry, 0.9, fairness=_fairness(None))
    assert registry.promote("churn", version, metric="roc_auc", max_fairness_gap=0.1).promoted


# -- PostgreSQL ---------------------------------------------------------------------------
@pytest.mark.postgres
def test_registry_on_postgres(
    postgres_server: dict[str, object], pg_database: str, tmp_path: Path
) -> None:
    warehouse = PostgresWarehouse(
        f"host={postgres_server['host']} port={postgres_server['port']} "
        f"user={postgres_server['user']} dbname={pg_database}"
    )
    try:
        registry = ModelRegistry(warehouse, LocalArtifactStore(tmp_path / "models"))
        assert registry.promote("churn", _register(registry, 0.70), metric="roc_auc").promoted
        assert not registry.promote("churn", _register(registry, 0.60), metric="roc_auc").promoted
        assert registry.promote("churn", _register(registry, 0.80), metric="roc_auc").promoted
        assert [(v.version, v.alias) for v in registry.list_versions("churn")] == [
            (3, "production"),
            (2, "candidate"),
            (1, "archived"),
        ]
        blocked = _register(registry, 0.9, fairness=_fairness(0.5))
        assert not registry.promote(
            "churn", blocked, metric="roc_auc", max_fairness_gap=0.1
        ).promoted
        with_chart = registry.register(
            "churn", _model(), kind="sklearn", params={}, metrics={}, fingerprint={},
            reports={"roc.png": PNG},
        )  # fmt: skip
        assert registry.load_report("churn", with_chart.version, "roc.png") == PNG
        loaded = registry.load("churn", "production")
        assert loaded.version.version == 3 and loaded.version.created_at.tzinfo is not None
        np.testing.assert_allclose(loaded.model.predict_proba(X), _model().predict_proba(X))
    finally:
        warehouse.close()
