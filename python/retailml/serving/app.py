"""The Flask application factory of the prediction API.

``create_app()`` builds everything from :class:`~retailml.config.Settings` (the registry and
the online store through :mod:`retailml.runtime`); tests pass fakes instead. Under gunicorn
each worker calls the factory after the fork, so no client is shared between processes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request

from ..config import Settings, load_settings
from ..features.online_store import OnlineStore
from .auth import KeyStore
from .errors import register_error_handlers
from .metrics import ServingMetrics
from .model import ModelHolder, RegistryLike, ServedModel, ShortLivedRegistry
from .prediction_log import PredictionLogger, open_spool
from .routes import register_blueprints
from .server import serve
from .state import EXTENSION, ServingState

__all__ = ["DEFAULT_CONFIG", "create_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG: dict[str, Any] = {
    "MAX_CONTENT_LENGTH": 1 << 20,  # 1 MiB: a full batch of records fits comfortably
    "JSON_SORT_KEYS": False,
    "RETAILML_MODEL_NAME": "churn",
    "RETAILML_MODEL_ALIAS": "production",
    "RETAILML_MODEL_REFRESH_S": 30.0,
    "RETAILML_MAX_BATCH": 1_000,
    "RETAILML_MAX_HORIZON": 90,
    "RETAILML_DEFAULT_HORIZON": 7,
    "RETAILML_EXPLAIN_TOP": 5,
    "RETAILML_PREDICTION_LOG": True,
}


def create_app(
    settings: Settings | None = None,
    *,
    registry: RegistryLike | None = None,
    online_store: OnlineStore | None = None,
    key_store_path: Path | str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the API. ``config`` overrides Flask/``RETAILML_*`` keys of :data:`DEFAULT_CONFIG`."""
    settings = settings or load_settings()
    app = Flask(__name__)
    app.config.update(DEFAULT_CONFIG)
    if config:
        app.config.update(config)
    app.json.sort_keys = bool(app.config["JSON_SORT_KEYS"])  # type: ignore[attr-defined]

    if registry is None or online_store is None:
        from .. import runtime  # lazily: runtime imports every client library

        if registry is None:
            # A fresh warehouse connection per (rare) registry check: embedded DuckDB allows
            # one process on the file at a time, and a dropped PostgreSQL connection heals.
            registry = ShortLivedRegistry(
                lambda: runtime.open_registry(settings),
                lock_path=(
                    settings.data_dir / "serving-registry.lock"
                    if settings.warehouse == "duckdb"
                    else None
                ),
            )
        if online_store is None:
            online_store = runtime.open_online_store(settings)

    metrics = ServingMetrics()

    def on_swap(model: ServedModel) -> None:
        metrics.model_version.labels(model=model.name).set(model.version)

    models = ModelHolder(
        registry,
        app.config["RETAILML_MODEL_NAME"],
        app.config["RETAILML_MODEL_ALIAS"],
        refresh_s=float(app.config["RETAILML_MODEL_REFRESH_S"]),
        on_swap=on_swap,
    )
    metrics.model_version.labels(model=models.name).set(0)
    models.load_now()  # synchronous first load; a failure leaves the app up but not ready

    keys = KeyStore(key_store_path or settings.api_keys_path)
    if len(keys) == 0:
        log.warning("no active API key in %s: every /v1 request will get 401", keys.path)

    prediction_log = None
    if app.config["RETAILML_PREDICTION_LOG"]:
        prediction_log = PredictionLogger(
            open_spool(settings),
            on_drop=lambda n: metrics.prediction_log_dropped.inc(n),
        )

    app.extensions[EXTENSION] = ServingState(
        settings=settings,
        models=models,
        store=online_store,
        keys=keys,
        metrics=metrics,
        prediction_log=prediction_log,
    )
    register_error_handlers(app)
    _register_request_hooks(app, metrics)
    register_blueprints(app)
    return app


def _register_request_hooks(app: Flask, metrics: ServingMetrics) -> None:
    @app.before_request
    def _start() -> None:
        g.request_id = uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.get("started")
        endpoint = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        if started is not None:
            metrics.latency.labels(request.method, endpoint).observe(time.perf_counter() - started)
        if g.get("request_id"):
            response.headers["X-Request-ID"] = g.request_id
        response.headers.setdefault("Cache-Control", "no-store")
        return response
