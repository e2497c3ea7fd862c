"""Shared by the serving tests: a real scikit-learn pipeline, an in-memory registry, and a
Flask test client that checks every response against the app's OpenAPI document."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from werkzeug.exceptions import MethodNotAllowed, NotFound

from retailml.features.online_store import EmbeddedOnlineStore, OnlineStoreError
from retailml.features.spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from retailml.serving.openapi import openapi_document

COUNTRIES = ("NL", "DE", "BE", "FR")
TIERS = ("bronze", "silver", "gold")
CHANNELS = ("web", "app", "marketplace")


# -- a real model ------------------------------------------------------------------------
def synthetic_features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 365, n).astype(float),
            "frequency_90d": rng.poisson(2, n).astype(float),
            "monetary_90d": rng.gamma(2.0, 40.0, n),
            "frequency_365d": rng.poisson(6, n).astype(float),
            "monetary_365d": rng.gamma(2.0, 150.0, n),
            "avg_order_value_365d": rng.gamma(2.0, 25.0, n),
            "return_rate_365d": rng.uniform(0, 0.4, n),
            "tenure_days": rng.integers(30, 2000, n).astype(float),
            "distinct_categories_365d": rng.integers(0, 8, n).astype(float),
            "country": rng.choice(COUNTRIES, n),
            "loyalty_tier": rng.choice(TIERS, n),
            "signup_channel": rng.choice(CHANNELS, n),
        }
    )
    return frame[list(FEATURES)]


def train_pipeline(seed: int = 0) -> Pipeline:
    frame = synthetic_features(600, seed)
    rng = np.random.default_rng(seed + 1)
    logit = (frame["recency_days"] - 150) / 40 - frame["frequency_90d"] * 0.5
    label = (rng.uniform(size=len(frame)) < 1 / (1 + np.exp(-logit))).astype(int)
    pipeline = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        (
                            "num",
                            Pipeline(
                                [
                                    ("impute", SimpleImputer(strategy="median")),
                                    ("scale", StandardScaler()),
                                ]
                            ),
                            list(NUMERIC_FEATURES),
                        ),
                        (
                            "cat",
                            OneHotEncoder(handle_unknown="ignore"),
                            list(CATEGORICAL_FEATURES),
                        ),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=500, random_state=seed)),
        ]
    )
    return pipeline.fit(frame, label)


# -- fakes -------------------------------------------------------------------------------
@dataclass
class FakeModelVersion:
    name: str
    version: int
    metrics: dict[str, Any]
    training_fingerprint: dict[str, Any]
    created_at: dt.datetime
    artifact_sha256: str


@dataclass
class FakeLoadedModel:
    version: FakeModelVersion
    model: Any


@dataclass
class FakeRegistry:
    """Implements ``get`` and ``load`` of the registry API over in-memory versions."""

    versions: dict[int, tuple[FakeModelVersion, Any]] = field(default_factory=dict)
    production: int | None = None
    corrupt: set[int] = field(default_factory=set)
    gate: threading.Event | None = None
    loads: int = 0

    def publish(self, pipeline: Any, *, promote: bool = True) -> int:
        version = len(self.versions) + 1
        mv = FakeModelVersion(
            name="churn",
            version=version,
            metrics={"roc_auc": 0.8 + version / 100},
            training_fingerprint={"rows": 600, "data_sha256": f"abc{version}"},
            created_at=dt.datetime(2024, 1, version, tzinfo=dt.UTC),
            artifact_sha256=f"{version:064x}",
        )
        self.versions[version] = (mv, pipeline)
        if promote:
            self.production = version
        return version

    def _resolve(self, name: str, version_or_alias: str) -> int:
        if name != "churn":
            raise KeyError(name)
        if version_or_alias == "production":
            if self.production is None:
                raise LookupError("no production version of 'churn'")
            return self.production
        return int(version_or_alias)

    def get(self, name: str, version_or_alias: str = "production") -> FakeModelVersion:
        return self.versions[self._resolve(name, version_or_alias)][0]

    def load(self, name: str, version_or_alias: str = "production") -> FakeLoadedModel:
        version = self._resolve(name, version_or_alias)
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.loads += 1
        if version in self.corrupt:
            raise ValueError(f"artifact sha256 mismatch for churn v{version}")
        mv, pipeline = self.versions[version]
        return FakeLoadedModel(mv, pipeline)


class DownStore(EmbeddedOnlineStore):
    """An online store whose backend does not answer."""

    def ping(self) -> bool:
        return False

    def get_many(self, ids: Any) -> list[dict[str, Any] | None]:
        raise OnlineStoreError("connection refused")

    def get_forecast(self, category: str, horizon_days: int) -> list[dict[str, Any]]:
        raise OnlineStoreError("connection refused")


# -- every response against the OpenAPI document -------------------------------------------
def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": doc["components"]})


def openapi_path(rule: str) -> str:
    return rule.replace("<", "{").replace(">", "}")


class ResponseMismatch(AssertionError):
    """A response (or an accepted request) the OpenAPI document does not describe."""


def check_against_openapi(app: Flask, response: Any, body: Any) -> None:
    """Fail unless ``response`` is what the document promises for its request: a documented
    status, a body matching that status's schema; and a request body that violates the
    documented request schema is never accepted (2xx)."""
    doc = openapi_document(app.config)
    request = response.request
    adapter = app.url_map.bind("localhost")
    try:
        rule, _ = adapter.match(request.path, method=request.method, return_rule=True)
    except (NotFound, MethodNotAllowed):
        if response.status_code not in (404, 405):
            raise ResponseMismatch(
                f"{request.method} {request.path}: {response.status_code}"
            ) from None
        _validator(doc, {"$ref": "#/components/schemas/Error"}).validate(response.get_json())
        return
    method = "get" if request.method == "HEAD" else request.method.lower()
    operation = doc["paths"][openapi_path(rule.rule)][method]
    status = str(response.status_code)
    documented = operation["responses"]
    if status not in documented:
        raise ResponseMismatch(
            f"{request.method} {request.path} answered {status}, documented: {sorted(documented)}"
            f"\n{response.get_data(as_text=True)[:500]}"
        )
    if request.method == "HEAD":
        return
    content = documented[status].get("content", {})
    if "application/json" in content:
        if not response.is_json:
            raise ResponseMismatch(f"{request.path} {status}: not JSON ({response.mimetype})")
        schema = content["application/json"].get("schema")
        if schema is not None:
            errors = sorted(
                _validator(doc, schema).iter_errors(response.get_json()), key=lambda e: e.path
            )
            if errors:
                raise ResponseMismatch(
                    f"{request.method} {request.path} {status} does not match its schema: "
                    f"{errors[0].message} at {list(errors[0].absolute_path)}"
                )
    elif "text/plain" in content and response.mimetype != "text/plain":
        raise ResponseMismatch(f"{request.path}: {response.mimetype}, documented text/plain")
    request_schema = (
        operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    ).get("schema")
    if request_schema is not None and body is not _NO_BODY and 200 <= response.status_code < 300:
        errors = list(_validator(doc, request_schema).iter_errors(body))
        if errors:
            raise ResponseMismatch(
                f"{request.method} {request.path} accepted a body the document rejects: "
                f"{errors[0].message}"
            )


_NO_BODY = object()


def _request_json(kwargs: dict[str, Any]) -> Any:
    import json

    if "json" in kwargs:
        return kwargs["json"]
    data = kwargs.get("data")
    if isinstance(data, str | bytes):
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            return _NO_BODY
    return _NO_BODY


class OpenAPICheckedClient(FlaskClient):
    """``app.test_client()`` that checks each response with :func:`check_against_openapi`."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        check_against_openapi(self.application, response, _request_json(kwargs))
        return response


@cache
def trained_pipeline(seed: int = 0) -> Pipeline:
    return train_pipeline(seed)
