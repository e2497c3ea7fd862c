"""The prediction API through ``app.test_client()``: a real sklearn Pipeline, fake registry."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.pipeline import Pipeline

from retailml.config import Settings
from retailml.features.online_store import EmbeddedOnlineStore
from retailml.features.spec import FEATURES, NUMERIC_FEATURES
from retailml.serving import auth
from retailml.serving.app import create_app
from retailml.serving.model import ModelHolder, ServedModel, reference_values
from retailml.serving.prediction_log import (
    PREDICTION_LOG_TABLE,
    PredictionSpool,
    flush_prediction_log,
    prediction_spool_path,
)
from retailml.serving.server import gunicorn_options
from retailml.warehouse.duckdb import DuckDBWarehouse
from tests.serving_support import (
    DownStore,
    FakeRegistry,
    OpenAPICheckedClient,
    synthetic_features,
    train_pipeline,
)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return train_pipeline(0)


@pytest.fixture(autouse=True)
def _every_response_matches_the_openapi_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``app.test_client()`` of these tests checks each response against the document."""
    from flask import Flask

    monkeypatch.setattr(Flask, "test_client_class", OpenAPICheckedClient)


@pytest.fixture(autouse=True)
def _apps_are_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stop the background threads of every app a test builds."""
    built: list[Any] = []
    original = create_app

    def tracked(*args: Any, **kwargs: Any) -> Any:
        app = original(*args, **kwargs)
        built.append(app)
        return app

    monkeypatch.setitem(globals(), "create_app", tracked)
    yield
    for app in built:
        app.extensions["retailml"].close()


# -- fixtures ----------------------------------------------------------------------------
CUSTOMERS = synthetic_features(5, seed=42)
CUSTOMER_IDS = [f"C{i:07d}" for i in range(1, 6)]
AS_OF = dt.date(2024, 3, 31)


def customer_table() -> pa.Table:
    frame = CUSTOMERS.copy()
    frame.insert(0, "as_of_date", AS_OF)
    frame.insert(0, "customer_id", CUSTOMER_IDS)
    return pa.Table.from_pandas(frame, preserve_index=False)


def forecast_table() -> pa.Table:
    days = list(range(1, 15))
    return pa.table(
        {
            "category": ["books"] * len(days),
            "forecast_date": [AS_OF + dt.timedelta(days=d) for d in days],
            "horizon_day": days,
            "units_forecast": [100.0 + d for d in days],
            "lower_95": [80.0 + d for d in days],
            "upper_95": [120.0 + d for d in days],
            "model_version": [3] * len(days),
        }
    )


def record(i: int) -> dict[str, Any]:
    row = CUSTOMERS.iloc[i].to_dict()
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedOnlineStore:
    store = EmbeddedOnlineStore(tmp_path / "online.sqlite3")
    store.put_customer_features(customer_table())
    store.put_forecasts(forecast_table())
    yield store
    store.close()


@pytest.fixture
def registry(pipeline: Pipeline) -> FakeRegistry:
    registry = FakeRegistry()
    registry.publish(pipeline)
    return registry


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "api_keys.json"


@pytest.fixture
def tokens(keys_path: Path) -> dict[str, str]:
    revoked = auth.create_key(keys_path, "old", ["predict"])
    revoked_id = revoked.split("_")[1]
    auth.revoke_key(keys_path, revoked_id)
    return {
        "predict": auth.create_key(keys_path, "shop-frontend", ["predict"]),
        "admin": auth.create_key(keys_path, "ops", ["admin"]),
        "revoked": revoked,
    }


APP_CONFIG = {
    "RETAILML_MODEL_REFRESH_S": 3600.0,
    "RETAILML_KEY_RECHECK_S": 0.0,
    "RETAILML_MAX_BATCH": 10,
    "MAX_CONTENT_LENGTH": 16 * 1024,
}


@pytest.fixture
def app(settings, registry, store, keys_path, tokens):
    app = create_app(
        settings,
        registry=registry,
        online_store=store,
        key_store_path=keys_path,
        config=APP_CONFIG,
    )
    yield app
    app.extensions["retailml"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def predict(tokens) -> dict[str, str]:
    return bearer(tokens["predict"])


def error_of(response) -> dict[str, Any]:
    assert response.is_json, response.data
    return response.get_json()["error"]


# -- health, readiness, metrics ----------------------------------------------------------
def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_ready(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["model"]["version"] == 1
    assert body["checks"]["online_store"]["ok"] is True


def test_readyz_503_when_online_store_down(settings, registry, tmp_path, keys_path, predict):
    app = create_app(
        settings,
        registry=registry,
        online_store=DownStore(tmp_path / "down.sqlite3"),
        key_store_path=keys_path,
        config={**APP_CONFIG, "RETAILML_PREDICTION_LOG": False},
    )
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["online_store"]["ok"] is False
    scored = client.post("/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=predict)
    assert scored.status_code == 503
    assert error_of(scored)["code"] == "online_store_unavailable"
    forecast = client.get("/v1/demand/forecast?category=books", headers=predict)
    assert forecast.status_code == 503


def test_readyz_503_without_production_model(settings, store, keys_path, predict):
    app = create_app(
        settings,
        registry=FakeRegistry(),
        online_store=store,
        key_store_path=keys_path,
        config={**APP_CONFIG, "RETAILML_PREDICTION_LOG": False},
    )
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    model = response.get_json()["checks"]["model"]
    assert model["ok"] is False
    assert "no production version" in model["last_error"]
    scored = client.post("/v1/churn/score", json={"features": record(0)}, headers=predict)
    assert scored.status_code == 503
    assert error_of(scored)["code"] == "model_unavailable"
    assert client.get("/v1/models/churn", headers=predict).status_code == 503


def test_readyz_503_when_artifact_fails_verification(settings, pipeline, store, keys_path):
    registry = FakeRegistry()
    registry.publish(pipeline)
    registry.corrupt.add(1)
    app = create_app(
        settings,
        registry=registry,
        online_store=store,
        key_store_path=keys_path,
        config={**APP_CONFIG, "RETAILML_PREDICTION_LOG": False},
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "sha256 mismatch" in response.get_json()["checks"]["model"]["last_error"]


def test_metrics(client, predict):
    client.post("/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=predict)
    client.post("/v1/churn/score", json={"customer_id": "nobody"}, headers=predict)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert (
        'retailml_http_requests_total{endpoint="/v1/churn/score",method="POST",status="200"} 1.0'
        in text
    )
    assert 'status="404"} 1.0' in text
    assert 'retailml_model_version{model="churn"} 1.0' in text
    assert 'retailml_predictions_total{model="churn",source="online_store"} 1.0' in text
    assert "retailml_http_request_duration_seconds_bucket" in text


# -- authentication ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer rml_000000000000_" + "x" * 43},
    ],
    ids=["none", "empty", "basic", "garbage", "unknown-key"],
)
def test_401_without_valid_key(client, headers):
    response = client.post(
        "/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=headers
    )
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_401_with_revoked_key(client, tokens):
    response = client.post(
        "/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=bearer(tokens["revoked"])
    )
    assert response.status_code == 401
    assert "revoked" in error_of(response)["message"]


def test_401_with_tampered_key(client, tokens):
    token = tokens["predict"]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = client.post(
        "/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=bearer(tampered)
    )
    assert response.status_code == 401


def test_403_when_scope_missing(client, tokens):
    admin = bearer(tokens["admin"])
    response = client.post("/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=admin)
    assert response.status_code == 403
    assert error_of(response)["details"]["required_scopes"] == ["predict"]
    assert client.get("/v1/demand/forecast?category=books", headers=admin).status_code == 403
    reload_ = client.post("/v1/models/churn:reload", headers=bearer(tokens["predict"]))
    assert reload_.status_code == 403


def test_revocation_applies_without_restart(client, keys_path, tokens, predict):
    payload = {"customer_id": CUSTOMER_IDS[0]}
    assert client.post("/v1/churn/score", json=payload, headers=predict).status_code == 200
    auth.revoke_key(keys_path, tokens["predict"].split("_")[1])
    assert client.post("/v1/churn/score", json=payload, headers=predict).status_code == 401


def test_key_file_is_hashed_and_private(keys_path, tokens):
    text = keys_path.read_text()
    assert stat.S_IMODE(os.stat(keys_path).st_mode) == 0o600
    for token in tokens.values():
        assert token not in text
        assert token.split("_", 2)[2] not in text
    keys = auth.list_keys(keys_path)
    assert [k.name for k in keys if not k.revoked] == ["shop-frontend", "ops"]
    assert all(len(k.token_sha256) == 64 for k in keys)
    assert all(k.token_sha256 not in f"{k!s} {k!r}" for k in keys)  # listings omit the digest
    verified = auth.KeyStore(keys_path).verify(tokens["predict"])
    assert verified is not None and verified.scopes == ("predict",)


@pytest.mark.parametrize(
    ("name", "scopes"), [("x", ["root"]), ("x", []), ("  ", ["predict"])], ids=str
)
def test_create_key_rejects_bad_input(keys_path, name, scopes):
    with pytest.raises(auth.ApiKeyError):
        auth.create_key(keys_path, name, scopes)


def test_revoke_unknown_key(keys_path, tokens):
    with pytest.raises(auth.ApiKeyError, match="no API key"):
        auth.revoke_key(keys_path, "nope")


def test_corrupt_key_file_fails_closed(client, keys_path, predict):
    keys_path.write_text("{not json")
    response = client.post(
        "/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=predict
    )
    assert response.status_code == 401


# -- scoring ------------------------------------------------------------------------------
def test_score_by_customer_id(client, predict, pipeline):
    response = client.post(
        "/v1/churn/score", json={"customer_id": CUSTOMER_IDS[2]}, headers=predict
    )
    assert response.status_code == 200
    body = response.get_json()
    expected = pipeline.predict_proba(CUSTOMERS.iloc[[2]])[0, 1]
    assert body["score"] == pytest.approx(expected)
    assert body["model"] == {"name": "churn", "version": 1}
    assert body["customer_id"] == CUSTOMER_IDS[2]
    assert body["as_of_date"] == AS_OF.isoformat()
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "explanation" not in body


def test_score_by_features_matches_score_by_id(client, predict):
    by_id = client.post("/v1/churn/score", json={"customer_id": CUSTOMER_IDS[3]}, headers=predict)
    by_features = client.post("/v1/churn/score", json={"features": record(3)}, headers=predict)
    assert by_features.status_code == 200
    assert by_features.get_json()["customer_id"] is None
    assert by_features.get_json()["score"] == pytest.approx(by_id.get_json()["score"])


def test_integers_are_accepted_for_numeric_features(client, predict):
    features = {**record(0), "recency_days": 12, "frequency_90d": 3}
    response = client.post("/v1/churn/score", json={"features": features}, headers=predict)
    assert response.status_code == 200


def test_unknown_category_value_is_scored(client, predict):
    features = {**record(0), "country": "XX"}
    response = client.post("/v1/churn/score", json={"features": features}, headers=predict)
    assert response.status_code == 200


def test_explain(client, predict, pipeline):
    features = {**record(1), "recency_days": 360.0}
    response = client.post(
        "/v1/churn/score", json={"features": features, "explain": True}, headers=predict
    )
    assert response.status_code == 200
    explanation = response.get_json()["explanation"]
    assert 0 < len(explanation) <= 5
    top = explanation[0]
    assert top["feature"] == "recency_days"
    assert top["contribution"] > 0  # long absence pushes churn up
    magnitudes = [abs(e["contribution"]) for e in explanation]
    assert magnitudes == sorted(magnitudes, reverse=True)
    # the contribution is the score minus the score with the feature at its reference
    base = pipeline.predict_proba(pd.DataFrame([features]))[0, 1]
    replaced = pipeline.predict_proba(
        pd.DataFrame([{**features, "recency_days": top["reference"]}])
    )
    assert top["contribution"] == pytest.approx(base - replaced[0, 1])


def test_reference_values_prefer_the_training_fingerprint(pipeline):
    recorded = {"recency_days": 30.0, "country": "NL"}
    assert reference_values(pipeline, {"feature_reference": recorded}) == recorded
    derived = reference_values(pipeline, {})
    assert set(derived) == set(NUMERIC_FEATURES)  # the imputer's medians


def test_unknown_customer_is_404(client, predict):
    response = client.post("/v1/churn/score", json={"customer_id": "C9999999"}, headers=predict)
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "customer_not_found"
    assert "C9999999" in error["message"]


def _features_without(name: str) -> dict[str, Any]:
    features = record(0)
    del features[name]
    return features


BAD_BODIES = [
    ("array-body", [1, 2], "must be a JSON object"),
    ("string-body", '"hello"', "must be a JSON object"),
    ("neither", {}, "exactly one of"),
    ("both", {"customer_id": "C1", "features": record(0)}, "exactly one of"),
    ("unknown-field", {"customer_id": "C1", "verbose": True}, "verbose"),
    ("id-number", {"customer_id": 42}, "customer_id must be a string"),
    ("id-empty", {"customer_id": ""}, "customer_id"),
    ("id-too-long", {"customer_id": "C" * 500}, "customer_id"),
    ("features-array", {"features": [1, 2]}, "features must be a JSON object"),
    ("missing-feature", {"features": _features_without("tenure_days")}, "tenure_days"),
    ("unknown-feature", {"features": {**record(0), "shoe_size": 42}}, "shoe_size"),
    ("string-number", {"features": {**record(0), "recency_days": "12"}}, "recency_days"),
    ("bool-number", {"features": {**record(0), "frequency_90d": True}}, "frequency_90d"),
    ("null-number", {"features": {**record(0), "monetary_90d": None}}, "monetary_90d"),
    ("number-category", {"features": {**record(0), "country": 31}}, "country"),
    ("huge-int", {"features": {**record(0), "tenure_days": 10**400}}, "tenure_days"),
    ("explain-string", {"customer_id": CUSTOMER_IDS[0], "explain": "yes"}, "explain"),
]


@pytest.mark.parametrize(
    ("body", "needle"), [(b, n) for _, b, n in BAD_BODIES], ids=[i for i, _, _ in BAD_BODIES]
)
def test_bad_score_requests_are_400(client, predict, body, needle):
    data = body if isinstance(body, str) else json.dumps(body)
    response = client.post(
        "/v1/churn/score", data=data, content_type="application/json", headers=predict
    )
    assert response.status_code == 400, response.get_json()
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert needle in error["message"]


def test_invalid_features_are_all_named(client, predict):
    features = {**_features_without("tenure_days"), "shoe_size": 1, "country": 3}
    response = client.post("/v1/churn/score", json={"features": features}, headers=predict)
    details = error_of(response)["details"]
    assert details["missing"] == ["tenure_days"]
    assert details["unknown"] == ["shoe_size"]
    assert set(details["invalid"]) == {"country"}


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b'{"customer_id": ', "application/json", 400),
        (b"", "application/json", 400),
        (b'{"customer_id": "C1"} trailing', "application/json", 400),
        (b'{"features": {"recency_days": NaN}}', "application/json", 400),
        (b"\xff\xfe\x00garbage", "application/json", 400),
        (b"[" * 5_000 + b"]" * 5_000, "application/json", 400),
        (b'{"customer_id": "C0000001"}', "text/plain", 415),
        (b"customer_id=C0000001", "application/x-www-form-urlencoded", 415),
    ],
    ids=["truncated", "empty", "trailing", "nan", "binary", "deep", "text-plain", "form"],
)
def test_malformed_bodies(client, predict, data, content_type, status):
    response = client.post("/v1/churn/score", data=data, content_type=content_type, headers=predict)
    assert response.status_code == status
    assert error_of(response)["message"]


def test_oversized_body_is_413(client, predict):
    data = json.dumps({"customer_id": "C1", "pad": "x" * (32 * 1024)})
    response = client.post(
        "/v1/churn/score", data=data, content_type="application/json", headers=predict
    )
    assert response.status_code == 413
    assert "limit" in error_of(response)["message"]


def test_no_input_causes_a_500(client, predict):
    rng = np.random.default_rng(7)
    junk: list[Any] = [None, 0, -1.5, "", "x", [], {}, [None], {"": None}, True]
    bodies = [
        *({"customer_id": j} for j in junk),
        *({"features": j} for j in junk),
        *({"features": {**record(0), name: j}} for name in FEATURES for j in junk),
        *({"customer_ids": j} for j in junk),
        *({"records": j} for j in junk),
        *({"records": [j]} for j in junk),
    ]
    for body in bodies:
        for path in ("/v1/churn/score", "/v1/churn/score:batch"):
            response = client.post(path, json=body, headers=predict)
            assert response.status_code < 500, (path, body, response.get_data(as_text=True))
            assert response.is_json
    for _ in range(50):
        raw = bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
        response = client.post(
            "/v1/churn/score", data=raw, content_type="application/json", headers=predict
        )
        assert 400 <= response.status_code < 500


# -- batch --------------------------------------------------------------------------------
def test_batch_by_ids_with_an_unknown_customer(client, predict, pipeline):
    ids = [CUSTOMER_IDS[0], "C9999999", CUSTOMER_IDS[4]]
    response = client.post("/v1/churn/score:batch", json={"customer_ids": ids}, headers=predict)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["customer_id"] for r in results] == ids
    assert results[1]["error"]["code"] == "customer_not_found"
    expected = pipeline.predict_proba(CUSTOMERS.iloc[[0, 4]])[:, 1]
    assert [results[0]["score"], results[2]["score"]] == pytest.approx(list(expected))


def test_batch_of_records_with_explanations(client, predict):
    records = [record(i) for i in range(3)]
    response = client.post(
        "/v1/churn/score:batch", json={"records": records, "explain": True}, headers=predict
    )
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert all(0 <= r["score"] <= 1 and r["explanation"] for r in results)


def test_batch_too_large_is_413(client, predict):
    response = client.post(
        "/v1/churn/score:batch", json={"customer_ids": ["C1"] * 11}, headers=predict
    )
    assert response.status_code == 413
    assert error_of(response)["details"] == {"size": 11, "limit": 10}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"customer_ids": []}, "must not be empty"),
        ({"customer_ids": "C1"}, "must be an array"),
        ({"customer_ids": ["C1"], "records": [record(0)]}, "exactly one of"),
        ({"customer_ids": ["C1", 7]}, "customer_ids[1]"),
        ({"records": [record(0), _features_without("country")]}, "records[1]"),
        ({"ids": ["C1"]}, "ids"),
    ],
    ids=["empty", "not-list", "both", "bad-id", "bad-record", "unknown-field"],
)
def test_bad_batches_are_400(client, predict, body, needle):
    response = client.post("/v1/churn/score:batch", json=body, headers=predict)
    assert response.status_code == 400
    assert needle in error_of(response)["message"]


# -- demand forecast ----------------------------------------------------------------------
def test_forecast(client, predict):
    response = client.get("/v1/demand/forecast?category=books&horizon=7", headers=predict)
    assert response.status_code == 200
    body = response.get_json()
    assert body["category"] == "books"
    assert body["model_version"] == 3
    assert [r["horizon_day"] for r in body["forecast"]] == list(range(1, 8))
    first = body["forecast"][0]
    assert first["forecast_date"] == (AS_OF + dt.timedelta(days=1)).isoformat()
    assert first["lower_95"] <= first["units_forecast"] <= first["upper_95"]


def test_forecast_default_and_partial_horizon(client, predict):
    default = client.get("/v1/demand/forecast?category=books", headers=predict).get_json()
    assert len(default["forecast"]) == 7
    longer = client.get("/v1/demand/forecast?category=books&horizon=30", headers=predict)
    assert longer.get_json()["available_horizon"] == 14


@pytest.mark.parametrize(
    ("query", "status", "needle"),
    [
        ("horizon=7", 400, "category"),
        ("category=&horizon=7", 400, "category"),
        ("category=books&horizon=seven", 400, "integer"),
        ("category=books&horizon=0", 400, "between"),
        ("category=books&horizon=1000", 400, "between"),
        ("category=books&days=7", 400, "days"),
        ("category=garden&horizon=7", 404, "garden"),
    ],
)
def test_bad_forecast_requests(client, predict, query, status, needle):
    response = client.get(f"/v1/demand/forecast?{query}", headers=predict)
    assert response.status_code == status
    assert needle in error_of(response)["message"]


# -- model metadata and refresh -----------------------------------------------------------
def test_model_metadata(client, predict, tokens):
    for headers in (predict, bearer(tokens["admin"])):
        response = client.get("/v1/models/churn", headers=headers)
        assert response.status_code == 200
        body = response.get_json()
        assert body["name"] == "churn"
        assert body["version"] == 1
        assert body["metrics"] == {"roc_auc": pytest.approx(0.81)}
        assert body["training_fingerprint"]["data_sha256"] == "abc1"
        assert body["artifact_sha256"] == f"{1:064x}"
        assert body["created_at"].startswith("2024-01-01")
        assert body["status"]["loaded"] is True
        assert body["inference"]["path"] == "compiled"
        assert body["inference"]["estimator"] == "LogisticRegression"


def test_admin_reload_picks_up_a_new_version(client, registry, tokens, predict):
    registry.publish(train_pipeline(1))
    response = client.post("/v1/models/churn:reload", headers=bearer(tokens["admin"]))
    assert response.status_code == 200
    assert response.get_json()["version"] == 2
    scored = client.post("/v1/churn/score", json={"features": record(0)}, headers=predict)
    assert scored.get_json()["model"]["version"] == 2
    assert 'retailml_model_version{model="churn"} 2.0' in client.get("/metrics").text


def test_background_refresh_keeps_serving_the_old_model(registry):
    holder = ModelHolder(registry, refresh_s=0.0)
    assert holder.load_now().version == 1
    registry.publish(train_pipeline(1))
    registry.gate = threading.Event()
    served = holder.current()  # starts the background check, does not wait for the load
    assert served.version == 1
    thread = holder._refreshing
    assert thread is not None and thread.is_alive()
    assert holder.current().version == 1  # still loading: requests keep the old model
    registry.gate.set()
    thread.join(10)
    assert holder.current().version == 2
    assert served.version == 1  # a request holding the old reference is unaffected


def test_refresh_is_rate_limited(registry):
    now = [0.0]
    holder = ModelHolder(registry, refresh_s=30.0, clock=lambda: now[0])
    holder.load_now()
    loads = registry.loads
    for _ in range(5):
        holder.current()
    assert registry.loads == loads
    assert holder._refreshing is None
    now[0] = 31.0
    holder.current()
    holder._refreshing.join(10)
    assert registry.loads == loads  # same production version: checked, not reloaded


def test_failed_reload_keeps_the_verified_model(registry):
    holder = ModelHolder(registry, refresh_s=0.0)
    holder.load_now()
    corrupt = registry.publish(train_pipeline(1))
    registry.corrupt.add(corrupt)
    assert holder.load_now().version == 1
    status = holder.status()
    assert status["version"] == 1
    assert "sha256 mismatch" in status["last_error"]


def test_served_model_rejects_non_finite_scores(registry):
    class NaNModel:
        classes_ = np.array([0, 1])

        def predict_proba(self, frame):
            return np.full((len(frame), 2), np.nan)

    registry.publish(NaNModel())
    holder = ModelHolder(registry)
    model = holder.load_now()
    assert isinstance(model, ServedModel)
    with pytest.raises(Exception, match="non-finite"):
        model.score([record(0)])


# -- generic HTTP errors ------------------------------------------------------------------
def test_unknown_route_and_method_are_json(client, predict):
    missing = client.get("/v1/nothing", headers=predict)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    wrong = client.get("/v1/churn/score", headers=predict)
    assert wrong.status_code == 405
    assert "POST" in wrong.headers["Allow"]
    assert error_of(wrong)["code"] == "method_not_allowed"


# -- prediction log -----------------------------------------------------------------------
def test_predictions_are_spooled_and_flushed(app, client, predict, settings, tmp_path):
    client.post("/v1/churn/score", json={"customer_id": CUSTOMER_IDS[0]}, headers=predict)
    client.post("/v1/churn/score:batch", json={"customer_ids": CUSTOMER_IDS[1:3]}, headers=predict)
    logger = app.extensions["retailml"].prediction_log
    assert logger.flush(10)
    spool = PredictionSpool(prediction_spool_path(settings))
    assert spool.count() == 3

    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb")
    try:
        assert flush_prediction_log(spool, warehouse) == 3
        assert spool.count() == 0
        rows = warehouse.query_arrow(
            f"select * from {PREDICTION_LOG_TABLE} order by customer_id"
        ).to_pylist()
        assert [r["customer_id"] for r in rows] == CUSTOMER_IDS[:3]
        assert {r["model_version"] for r in rows} == {1}
        assert len({r["request_id"] for r in rows}) == 3
        assert json.loads(rows[0]["features"])["country"] == record(0)["country"]
        assert all(0 <= r["score"] <= 1 and r["latency_ms"] > 0 for r in rows)
        assert flush_prediction_log(spool, warehouse) == 0
    finally:
        warehouse.close()


class BrokenWarehouse(DuckDBWarehouse):
    def append_arrow(self, table, data):
        raise RuntimeError("warehouse is down")


def _spool_with_rows(app, client, predict) -> PredictionSpool:
    for cid in CUSTOMER_IDS[:2]:
        client.post("/v1/churn/score", json={"customer_id": cid}, headers=predict)
    logger = app.extensions["retailml"].prediction_log
    assert logger.flush(10)
    return logger.spool


def test_flush_keeps_rows_when_the_warehouse_fails(app, client, predict, tmp_path):
    spool = _spool_with_rows(app, client, predict)
    broken = BrokenWarehouse(tmp_path / "broken.duckdb")
    try:
        with pytest.raises(RuntimeError, match="down"):
            flush_prediction_log(spool, broken)
    finally:
        broken.close()
    assert spool.count() == 2
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb")
    try:
        assert flush_prediction_log(spool, warehouse) == 2
    finally:
        warehouse.close()


def test_flush_after_a_crash_between_commit_and_delete_adds_no_duplicates(
    app, client, predict, tmp_path
):
    spool = _spool_with_rows(app, client, predict)
    for cid in CUSTOMER_IDS[2:4]:
        client.post("/v1/churn/score", json={"customer_id": cid}, headers=predict)
    assert app.extensions["retailml"].prediction_log.flush(10)
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb")

    class DiesAfterCommit(PredictionSpool):
        """The flushing process dies after the warehouse committed, before the delete."""

        def delete_through(self, seq: int) -> None:
            raise KeyboardInterrupt("killed")

    try:
        with pytest.raises(KeyboardInterrupt):
            flush_prediction_log(DiesAfterCommit(spool.path), warehouse, batch_rows=2)
        assert warehouse.query_arrow(f"select * from {PREDICTION_LOG_TABLE}").num_rows == 2
        assert spool.count() == 4  # the committed batch is still spooled too
        assert flush_prediction_log(spool, warehouse, batch_rows=2) == 2  # only the rest
        ids = warehouse.query_arrow(f"select request_id from {PREDICTION_LOG_TABLE}")
        assert ids.num_rows == 4 and len(set(ids.column(0).to_pylist())) == 4
        assert spool.count() == 0
    finally:
        warehouse.close()


def test_logging_never_blocks_when_the_queue_is_full(settings):
    from retailml.serving.prediction_log import PredictionLogger, PredictionRecord

    class SlowSpool(PredictionSpool):
        gate = threading.Event()

        def append(self, records):
            self.gate.wait(10)
            return len(records)

    dropped: list[int] = []
    logger = PredictionLogger(
        SlowSpool(settings.data_dir / "slow.sqlite3"),
        max_queue=2,
        batch_size=1,
        on_drop=dropped.append,
    )
    rec = PredictionRecord("r", dt.datetime.now(dt.UTC), "churn", 1, None, {}, 0.5, 1.0)
    logger.log([rec] * 10)
    assert sum(dropped) >= 7
    SlowSpool.gate.set()
    assert logger.flush(10)
    logger.close()


# -- production server configuration -----------------------------------------------------
def test_gunicorn_options(settings, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setenv("RETAILML_API_WORKERS", "3")
    options = gunicorn_options(settings.model_copy(update={"api_port": 9123}), threads=2)
    assert options["bind"] == ["127.0.0.1:9123"]
    assert options["workers"] == 3
    assert options["threads"] == 2  # gunicorn runs sync workers with threads as gthread
    assert options["worker_class"] == "sync"
    assert options["preload_app"] is False
    assert callable(options["child_exit"])
    assert os.environ["OMP_NUM_THREADS"] == "1"


# -- the real registry, built from settings ------------------------------------------------
def test_create_app_from_settings_with_the_real_registry(settings, store, keys_path, tokens):
    from retailml import runtime

    registry = runtime.open_registry(settings)
    try:
        version = registry.register(
            "churn",
            train_pipeline(0),
            kind="sklearn",
            params={},
            metrics={"roc_auc": 0.8},
            fingerprint={"rows": 600},
        )
        registry.promote("churn", version.version, metric="roc_auc")
    finally:
        registry.warehouse.close()

    app = create_app(
        settings,
        online_store=store,
        key_store_path=keys_path,
        config={**APP_CONFIG, "RETAILML_PREDICTION_LOG": False},
    )
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    body = client.get("/v1/models/churn", headers=bearer(tokens["predict"])).get_json()
    assert body["version"] == 1
    assert body["artifact_sha256"] == version.artifact_sha256
    # the app holds no warehouse connection between registry checks: another process (the
    # pipeline) can open the embedded warehouse for writing
    code = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"
    probe = subprocess.run(
        [sys.executable, "-c", code, str(settings.duckdb_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr


def _register_with_the_real_registry(settings: Settings) -> Any:
    from retailml import runtime

    registry = runtime.open_registry(settings)
    try:
        version = registry.register(
            "churn",
            train_pipeline(0),
            kind="sklearn",
            params={},
            metrics={"roc_auc": 0.8},
            fingerprint={"rows": 600},
        )
        registry.promote("churn", version.version, metric="roc_auc")
    finally:
        registry.warehouse.close()
    return version


def test_a_tampered_artifact_is_never_loaded(settings, store, keys_path, tokens):
    """The served artifact must hash to the registry's sha256: one changed byte on disk and
    the app stays unready instead of deserialising it."""
    from urllib.parse import urlparse

    version = _register_with_the_real_registry(settings)
    artifact = Path(urlparse(version.artifact_uri).path)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    app = create_app(
        settings,
        online_store=store,
        key_store_path=keys_path,
        config={**APP_CONFIG, "RETAILML_PREDICTION_LOG": False},
    )
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "sha256" in ready.get_json()["checks"]["model"]["last_error"]
    scored = client.post(
        "/v1/churn/score", json={"features": record(0)}, headers=bearer(tokens["predict"])
    )
    assert scored.status_code == 503


def test_an_encrypted_artifact_is_served_only_with_the_key(settings, store, keys_path, tokens):
    from urllib.parse import urlparse

    from cryptography.fernet import Fernet
    from pydantic import SecretStr

    key = Fernet.generate_key().decode()
    encrypted = settings.model_copy(update={"model_encryption_key": SecretStr(key)})
    version = _register_with_the_real_registry(encrypted)
    stored = Path(urlparse(version.artifact_uri).path).read_bytes()
    assert not stored.startswith(b"PK")  # not a readable skops (zip) file at rest
    config = {**APP_CONFIG, "RETAILML_PREDICTION_LOG": False}
    with_key = create_app(encrypted, online_store=store, key_store_path=keys_path, config=config)
    client = with_key.test_client()
    assert client.get("/readyz").status_code == 200
    scored = client.post(
        "/v1/churn/score", json={"features": record(0)}, headers=bearer(tokens["predict"])
    )
    assert scored.status_code == 200
    without = create_app(settings, online_store=store, key_store_path=keys_path, config=config)
    ready = without.test_client().get("/readyz")
    assert ready.status_code == 503
    assert "encryption key" in ready.get_json()["checks"]["model"]["last_error"]


def test_short_lived_registry_retries_the_open_and_closes_the_warehouse(registry):
    from retailml.serving.model import ShortLivedRegistry

    class Warehouse:
        closed = 0

        def close(self) -> None:
            Warehouse.closed += 1

    failures = [RuntimeError("Could not set lock on file"), RuntimeError("still locked")]

    def open_registry() -> FakeRegistry:
        if failures:
            raise failures.pop(0)
        registry.warehouse = Warehouse()
        return registry

    waits: list[float] = []
    short = ShortLivedRegistry(open_registry, attempts=3, sleep=waits.append)
    assert short.get("churn").version == 1
    assert waits == [pytest.approx(0.2), pytest.approx(0.4)]
    assert short.load("churn").version.version == 1
    assert Warehouse.closed == 2
    failures.extend(RuntimeError("locked") for _ in range(3))
    with pytest.raises(RuntimeError, match="locked"):
        short.get("churn")


def test_holder_retries_sooner_while_no_model_is_loaded(pipeline):
    registry = FakeRegistry()
    now = [0.0]
    holder = ModelHolder(registry, refresh_s=30.0, retry_s=5.0, clock=lambda: now[0])
    assert holder.load_now() is None
    registry.publish(pipeline)
    now[0] = 4.0
    assert holder.current() is None and holder._refreshing is None
    now[0] = 5.0
    holder.current()
    holder._refreshing.join(10)
    assert holder.current().version == 1


def test_a_model_without_predict_proba_is_not_served(registry):
    registry.publish(object())
    holder = ModelHolder(registry)
    assert holder.load_now() is None
    assert "predict_proba" in holder.status()["last_error"]
