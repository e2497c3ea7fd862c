"""The OpenAPI 3.1 document of the API, built from the same constants the code validates with.

Feature names and types come from :mod:`retailml.features.spec`, limits (batch size, body
size, horizon, id and category lengths) from the app's config and
:mod:`~retailml.serving.validation`, so the document cannot drift from them. The tests
check the rest: the document is valid OpenAPI, its operations are exactly the app's routes
with the scopes the views require, and every response the tests see matches its schema.
Served at ``GET /v1/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import __version__
from ..features.spec import CATEGORICAL_FEATURES, ENTITY_KEY, FEATURES, NUMERIC_FEATURES
from .validation import MAX_CATEGORY_LENGTH, MAX_ID_LENGTH

OPENAPI_PATH = "/v1/openapi.json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS: dict[int, str] = {
    400: "Invalid request: malformed JSON, a wrong type, a missing or unknown field (named)",
    401: "No API key, or an invalid or revoked one",
    403: "The API key lacks the required scope",
    404: "Unknown customer or category",
    413: "Request body or batch larger than the limit",
    415: "Content-Type is not application/json",
    422: "The model could not score these features",
    503: "No verified model loaded yet, or the online feature store is unavailable",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), ERRORS[s]) for s in statuses}


def _schemas(max_batch: int, max_horizon: int) -> dict[str, Any]:
    nullable_number = {"type": ["number", "null"]}
    feature_value = {"type": ["number", "string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "examples": ["invalid_request"]},
                        "message": {"type": "string"},
                        "details": {"type": "object"},
                    },
                },
                "request_id": {"type": "string"},
            },
        },
        "CustomerId": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": r"^\S(.*\S)?$",
            "description": "Printable characters without surrounding spaces",
            "examples": ["C0000042"],
        },
        "FeatureRecord": {
            "type": "object",
            "description": "A complete feature record (the contract of retailml.features.spec)",
            "required": list(FEATURES),
            "additionalProperties": False,
            "properties": {
                **{name: {"type": "number"} for name in NUMERIC_FEATURES},
                **{
                    name: {"type": "string", "maxLength": MAX_CATEGORY_LENGTH}
                    for name in CATEGORICAL_FEATURES
                },
            },
        },
        "ScoreRequest": {
            "type": "object",
            "description": f"Exactly one of {ENTITY_KEY} (features from the online store) "
            "or features",
            "additionalProperties": False,
            "properties": {
                ENTITY_KEY: _ref("CustomerId"),
                "features": _ref("FeatureRecord"),
                "explain": {"type": "boolean", "default": False},
            },
            "oneOf": [
                {"required": [ENTITY_KEY], "not": {"required": ["features"]}},
                {"required": ["features"], "not": {"required": [ENTITY_KEY]}},
            ],
        },
        "BatchRequest": {
            "type": "object",
            "description": "Exactly one of customer_ids or records",
            "additionalProperties": False,
            "properties": {
                "customer_ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_batch,
                    "items": _ref("CustomerId"),
                },
                "records": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_batch,
                    "items": _ref("FeatureRecord"),
                },
                "explain": {"type": "boolean", "default": False},
            },
            "oneOf": [
                {"required": ["customer_ids"], "not": {"required": ["records"]}},
                {"required": ["records"], "not": {"required": ["customer_ids"]}},
            ],
        },
        "ModelRef": {
            "type": "object",
            "required": ["name", "version"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "version": {"type": "integer"}},
        },
        "Contribution": {
            "type": "object",
            "description": "Score minus the score with this feature at its training reference",
            "required": ["feature", "value", "reference", "contribution"],
            "additionalProperties": False,
            "properties": {
                "feature": {"enum": list(FEATURES)},
                "value": feature_value,
                "reference": feature_value,
                "contribution": {"type": "number"},
            },
        },
        "Explanation": {
            "type": "array",
            "description": "Top contributions, largest magnitude first",
            "items": _ref("Contribution"),
        },
        "Probability": {"type": "number", "minimum": 0, "maximum": 1},
        "ScoreResponse": {
            "type": "object",
            "required": ["request_id", "model", ENTITY_KEY, "score"],
            "additionalProperties": False,
            "properties": {
                "request_id": {"type": "string"},
                "model": _ref("ModelRef"),
                ENTITY_KEY: {"type": ["string", "null"]},
                "score": _ref("Probability"),
                "as_of_date": {"type": "string", "description": "Date of the online features"},
                "explanation": _ref("Explanation"),
            },
        },
        "BatchResult": {
            "oneOf": [
                {
                    "type": "object",
                    "required": [ENTITY_KEY, "score"],
                    "additionalProperties": False,
                    "properties": {
                        ENTITY_KEY: {"type": "string"},
                        "score": _ref("Probability"),
                        "as_of_date": {"type": ["string", "null"]},
                        "explanation": _ref("Explanation"),
                    },
                },
                {
                    "type": "object",
                    "description": "An id without online features (the batch still succeeds)",
                    "required": [ENTITY_KEY, "error"],
                    "additionalProperties": False,
                    "properties": {
                        ENTITY_KEY: {"type": "string"},
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"const": "customer_not_found"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
                {
                    "type": "object",
                    "required": ["index", "score"],
                    "additionalProperties": False,
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "score": _ref("Probability"),
                        "explanation": _ref("Explanation"),
                    },
                },
            ]
        },
        "BatchResponse": {
            "type": "object",
            "required": ["request_id", "model", "results"],
            "additionalProperties": False,
            "properties": {
                "request_id": {"type": "string"},
                "model": _ref("ModelRef"),
                "results": {"type": "array", "items": _ref("BatchResult")},
            },
        },
        "ForecastResponse": {
            "type": "object",
            "required": [
                "request_id",
                "category",
                "horizon",
                "available_horizon",
                "model_version",
                "forecast",
            ],
            "additionalProperties": False,
            "properties": {
                "request_id": {"type": "string"},
                "category": {"type": "string"},
                "horizon": {"type": "integer", "minimum": 1, "maximum": max_horizon},
                "available_horizon": {"type": "integer"},
                "model_version": {"type": ["integer", "null"]},
                "forecast": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["forecast_date", "horizon_day", "units_forecast"],
                        "additionalProperties": False,
                        "properties": {
                            "forecast_date": {"type": "string"},
                            "horizon_day": {"type": "integer"},
                            "units_forecast": nullable_number,
                            "lower_95": nullable_number,
                            "upper_95": nullable_number,
                        },
                    },
                },
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": [
                "name",
                "version",
                "artifact_sha256",
                "loaded_at",
                "metrics",
                "training_fingerprint",
                "inference",
                "alias",
                "status",
            ],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "integer"},
                "created_at": {"type": ["string", "null"]},
                "artifact_sha256": {"type": "string"},
                "loaded_at": {"type": "string"},
                "metrics": {"type": "object", "description": "As recorded by training"},
                "training_fingerprint": {
                    "type": "object",
                    "description": "Training data: query, row count, content sha256, dbt lineage",
                },
                "inference": {
                    "type": "object",
                    "description": "Which path scores: the compiled fast path (verified "
                    "against the pipeline when loaded) or the scikit-learn pipeline, and why",
                    "required": ["path"],
                    "properties": {
                        "path": {"enum": ["compiled", "pipeline"]},
                        "estimator": {"type": "string"},
                        "reason": {"type": "string"},
                        "verified_records": {"type": "integer"},
                        "verified_max_abs_diff": {"type": "number"},
                    },
                },
                "alias": {"type": "string"},
                "status": _ref("ModelStatus"),
            },
        },
        "ModelStatus": {
            "type": "object",
            "required": ["loaded", "version", "last_error"],
            "additionalProperties": False,
            "properties": {
                "loaded": {"type": "boolean"},
                "version": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "additionalProperties": False,
            "properties": {
                "status": {"enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "required": ["model", "online_store"],
                    "properties": {
                        "model": {
                            "type": "object",
                            "required": ["ok", "loaded", "version", "last_error"],
                            "properties": {
                                "ok": {"type": "boolean"},
                                "loaded": {"type": "boolean"},
                                "version": {"type": ["integer", "null"]},
                                "last_error": {"type": ["string", "null"]},
                            },
                        },
                        "online_store": {
                            "type": "object",
                            "required": ["ok", "kind"],
                            "properties": {"ok": {"type": "boolean"}, "kind": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }


def openapi_document(config: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app with ``config`` (Flask config: the limits)."""
    max_batch = int(config["RETAILML_MAX_BATCH"])
    max_horizon = int(config["RETAILML_MAX_HORIZON"])
    max_body = config.get("MAX_CONTENT_LENGTH")
    predict = [{"bearerAuth": ["predict"]}]
    either = [{"bearerAuth": ["predict"]}, {"bearerAuth": ["admin"]}]
    admin = [{"bearerAuth": ["admin"]}]
    json_body = {"application/json": {}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "retailml prediction API",
            "version": __version__,
            "description": (
                "Churn scores (by customer id from the online feature store, or from a full "
                "feature record), demand forecasts and model metadata. Every /v1 prediction "
                "endpoint takes `Authorization: Bearer <API key>`; a key carries the scopes "
                "`predict` and/or `admin` (the scopes listed under each operation's security). "
                f"Request bodies are JSON, at most {max_body} bytes. Errors are JSON with a "
                "4xx status naming the bad field."
            ),
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API key `rml_<key id>_<secret>` (`retailml keys create`)",
                }
            },
            "schemas": _schemas(max_batch, max_horizon),
        },
        "paths": {
            "/v1/churn/score": {
                "post": {
                    "operationId": "scoreChurn",
                    "summary": "Churn probability of one customer",
                    "security": predict,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ScoreRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("ScoreResponse"), "The score"),
                        **_errors(400, 401, 403, 404, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/churn/score:batch": {
                "post": {
                    "operationId": "scoreChurnBatch",
                    "summary": f"Churn probabilities of up to {max_batch} customers",
                    "security": predict,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BatchRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("BatchResponse"), "One result per item, in order"),
                        **_errors(400, 401, 403, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/demand/forecast": {
                "get": {
                    "operationId": "demandForecast",
                    "summary": "Daily demand forecast of a category (the production forecast)",
                    "security": predict,
                    "parameters": [
                        {
                            "name": "category",
                            "in": "query",
                            "required": True,
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_CATEGORY_LENGTH,
                            },
                        },
                        {
                            "name": "horizon",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": max_horizon,
                                "default": int(config["RETAILML_DEFAULT_HORIZON"]),
                            },
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("ForecastResponse"), "The forecast with 95% intervals"),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/v1/models/churn": {
                "get": {
                    "operationId": "churnModel",
                    "summary": "Serving version, metrics, training-data fingerprint",
                    "security": either,
                    "responses": {
                        "200": _json(_ref("ModelMetadata"), "The served model"),
                        **_errors(401, 403, 503),
                    },
                }
            },
            "/v1/models/churn:reload": {
                "post": {
                    "operationId": "reloadChurnModel",
                    "summary": "Check the registry now and switch to a new production version",
                    "security": admin,
                    "responses": {
                        "200": _json(_ref("ModelMetadata"), "The served model after the check"),
                        **_errors(401, 403, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "ok"}},
                            },
                            "Alive",
                        )
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: a verified model is loaded and the store answers",
                    "security": [],
                    "responses": {
                        "200": _json(_ref("Readiness"), "Ready for traffic"),
                        "503": _json(_ref("Readiness"), "Not ready: take out of rotation"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (requests, latencies, model version)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": json_body}},
                }
            },
        },
    }
