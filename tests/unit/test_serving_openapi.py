"""The OpenAPI document is valid, served, and true to the code: its operations are the app's
routes with the scopes the views require, its limits are the app's, and (property-based)
no input gets a 500 or an answer the document does not describe."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from flask import Flask, jsonify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from retailml.config import Settings
from retailml.features.online_store import EmbeddedOnlineStore
from retailml.features.spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from retailml.serving import auth
from retailml.serving.app import DEFAULT_CONFIG, create_app
from retailml.serving.openapi import OPENAPI_PATH, openapi_document
from tests.serving_support import (
    FakeRegistry,
    OpenAPICheckedClient,
    ResponseMismatch,
    openapi_path,
    synthetic_features,
    trained_pipeline,
)

CONFIG = {
    "RETAILML_MODEL_REFRESH_S": 3600.0,
    "RETAILML_KEY_RECHECK_S": 0.0,
    "RETAILML_MAX_BATCH": 20,
    "MAX_CONTENT_LENGTH": 64 * 1024,
    "RETAILML_PREDICTION_LOG": False,
}
IDS = [f"C{i:07d}" for i in range(1, 21)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Flask, dict[str, str]]:
    """One app for the whole module (hypothesis runs many examples against it)."""
    root = tmp_path_factory.mktemp("openapi")
    frame = synthetic_features(len(IDS), seed=9)
    frame.insert(0, "as_of_date", dt.date(2024, 3, 31))
    frame.insert(0, "customer_id", IDS)
    store = EmbeddedOnlineStore(root / "online.sqlite3")
    store.put_customer_features(pa.Table.from_pandas(frame, preserve_index=False))
    days = range(1, 31)
    store.put_forecasts(
        pa.table(
            {
                "category": ["books"] * 30,
                "forecast_date": [dt.date(2024, 4, 1) + dt.timedelta(days=d) for d in days],
                "horizon_day": list(days),
                "units_forecast": [10.0] * 30,
                "lower_95": [5.0] * 30,
                "upper_95": [15.0] * 30,
                "model_version": [1] * 30,
            }
        )
    )
    registry = FakeRegistry()
    registry.publish(trained_pipeline(0))
    keys = root / "keys.json"
    tokens = {
        "predict": auth.create_key(keys, "client", ["predict"]),
        "admin": auth.create_key(keys, "ops", ["admin"]),
    }
    settings_ = Settings(data_dir=root / "data", _env_file=None)  # type: ignore[call-arg]
    app = create_app(
        settings_, registry=registry, online_store=store, key_store_path=keys, config=CONFIG
    )
    app.test_client_class = OpenAPICheckedClient
    return app, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the document itself ----------------------------------------------------------------------
def test_document_is_valid_openapi_and_served(served):
    app, _ = served
    doc = openapi_document(app.config)
    validate(doc)
    validate(openapi_document(DEFAULT_CONFIG))
    response = app.test_client().get(OPENAPI_PATH)  # no key needed
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(doc))


def test_operations_are_exactly_the_routes_with_their_scopes(served):
    app, _ = served
    doc = openapi_document(app.config)
    documented = {
        (path, method.upper()): op.get("security", [])
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    routed = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routed[(openapi_path(rule.rule), method)] = getattr(view, "required_scopes", ())
    assert set(documented) == set(routed)
    for operation, security in documented.items():
        scopes = sorted({s for requirement in security for s in requirement.get("bearerAuth", [])})
        assert scopes == sorted(routed[operation]), operation


def test_limits_and_features_come_from_the_code(served):
    app, _ = served
    schemas = openapi_document(app.config)["components"]["schemas"]
    batch = schemas["BatchRequest"]["properties"]
    assert batch["customer_ids"]["maxItems"] == CONFIG["RETAILML_MAX_BATCH"]
    assert batch["records"]["maxItems"] == CONFIG["RETAILML_MAX_BATCH"]
    record = schemas["FeatureRecord"]
    assert record["required"] == list(FEATURES)
    assert {f for f, s in record["properties"].items() if s["type"] == "number"} == set(
        NUMERIC_FEATURES
    )
    assert {f for f, s in record["properties"].items() if s["type"] == "string"} == set(
        CATEGORICAL_FEATURES
    )


def test_the_response_check_can_fail(served, tmp_path: Path):
    """An answer the document does not describe is caught by the checked client."""
    app, tokens = served
    other = Flask("other")
    other.config.update(app.config)
    other.extensions.update(app.extensions)
    from retailml.serving.errors import register_error_handlers
    from retailml.serving.routes import register_blueprints

    register_error_handlers(other)
    register_blueprints(other)
    other.view_functions["health.healthz"] = lambda: jsonify(status="fine")
    other.view_functions["models.churn_model"] = lambda: (jsonify(error="nope"), 418)
    other.test_client_class = OpenAPICheckedClient
    client = other.test_client()
    with pytest.raises(ResponseMismatch, match="does not match its schema"):
        client.get("/healthz")
    with pytest.raises(ResponseMismatch, match="418"):
        client.get("/v1/models/churn", headers=bearer(tokens["admin"]))


# -- property-based: no input gets a 500, every answer is documented ---------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
feature_values = {
    **{f: st.floats(allow_nan=False, allow_infinity=False, width=64) for f in NUMERIC_FEATURES},
    **{f: st.text(max_size=100) for f in CATEGORICAL_FEATURES},
}
valid_records = st.fixed_dictionaries(feature_values)


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record with one field dropped, retyped or added."""
    record = dict(draw(valid_records))
    field = draw(st.sampled_from([*FEATURES, "extra"]))
    action = draw(st.sampled_from(["drop", "retype", "add"]))
    if action == "drop":
        record.pop(field, None)
    else:
        record[field] = draw(json_values)
    return record


score_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "customer_id": st.one_of(st.sampled_from(IDS), st.text(max_size=140), json_values),
            "features": st.one_of(valid_records, mutated_records(), json_values),
            "explain": st.one_of(st.booleans(), json_values),
            "other": json_values,
        },
    ),
)
batch_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "customer_ids": st.one_of(
                st.lists(st.one_of(st.sampled_from(IDS), st.text(max_size=10)), max_size=25),
                json_values,
            ),
            "records": st.one_of(
                st.lists(st.one_of(valid_records, mutated_records()), max_size=22), json_values
            ),
            "explain": st.one_of(st.booleans(), json_values),
        },
    ),
)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,  # no example database written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _answered_cleanly(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json


@FUZZ
@given(body=score_bodies)
def test_any_score_body_is_answered_as_documented(served, body):
    app, tokens = served
    response = app.test_client().post(
        "/v1/churn/score", json=body, headers=bearer(tokens["predict"])
    )
    _answered_cleanly(response)


@FUZZ
@given(body=batch_bodies)
def test_any_batch_body_is_answered_as_documented(served, body):
    app, tokens = served
    response = app.test_client().post(
        "/v1/churn/score:batch", json=body, headers=bearer(tokens["predict"])
    )
    _answered_cleanly(response)


@FUZZ
@given(
    raw=st.binary(max_size=300),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x+json"]),
)
def test_any_bytes_are_answered_as_documented(served, raw, content_type):
    app, tokens = served
    for path in ("/v1/churn/score", "/v1/churn/score:batch"):
        response = app.test_client().post(
            path, data=raw, content_type=content_type, headers=bearer(tokens["predict"])
        )
        _answered_cleanly(response)


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["category", "horizon", "days", ""]),
        st.one_of(st.sampled_from(["books", "7", "0", "91", "-1"]), st.text(max_size=30)),
        max_size=3,
    )
)
def test_any_forecast_query_is_answered_as_documented(served, params):
    app, tokens = served
    response = app.test_client().get(
        "/v1/demand/forecast", query_string=params, headers=bearer(tokens["predict"])
    )
    _answered_cleanly(response)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # extreme values
@FUZZ
@given(record=valid_records, explain=st.booleans())
def test_every_documented_record_is_scored(served, record, explain):
    """What the document accepts, the API accepts: a score (or 422 when the model's own
    arithmetic overflows on extreme values)."""
    app, tokens = served
    response = app.test_client().post(
        "/v1/churn/score",
        json={"features": record, "explain": explain},
        headers=bearer(tokens["predict"]),
    )
    assert response.status_code in (200, 422), response.get_data(as_text=True)
    if response.status_code == 200:
        assert 0.0 <= response.get_json()["score"] <= 1.0
