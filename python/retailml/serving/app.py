"""The Flask application factory of the prediction API.

``create_app()`` builds everything from :class:`~retailml.config.Settings` (the registry and
the online store through :mod:`retailml.runtime`); tests pass fakes instead. Under gunicorn
each worker calls the factory after the fork, so no client is shared between processes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request

from ..config import Settings, load_settings
from ..features.online_store import OnlineStore
from .auth import KeyStore
from .errors import register_error_handlers
from .metrics import ServingMetrics
from .model import ModelHolder, RegistryLike, ServedModel, ShortLivedRegistry
from .prediction_log import PredictionLogFlusher, PredictionLogger, open_spool
from .routes import register_blueprints
from .server import serve
from .state import EXTENSION, ServingState

if TYPE_CHECKING:
    from ..warehouse.base import Warehouse

__all__ = ["DEFAULT_CONFIG", "create_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG: dict[str, Any] = {
    "MAX_CONTENT_LENGTH": 1 << 20,  # 1 MiB: a full batch of records fits comfortably
    "JSON_SORT_KEYS": False,
    "RETAILML_MODEL_NAME": "churn",
    "RETAILML_MODEL_ALIAS": "production",
    "RETAILML_MODEL_REFRESH_S": None,  # None: settings.api_model_refresh_s
    "RETAILML_COMPILED_INFERENCE": True,  # the fast path (serving/compiled.py) when verified
    "RETAILML_MAX_BATCH": 1_000,
    "RETAILML_MAX_HORIZON": 90,
    "RETAILML_DEFAULT_HORIZON": 7,
    "RETAILML_EXPLAIN_TOP": 5,
    "RETAILML_PREDICTION_LOG": True,
    "RETAILML_PREDICTION_LOG_FLUSH_S": None,  # None: settings.prediction_log_flush_s
    "RETAILML_KEY_RECHECK_S": 1.0,  # how soon a new or revoked API key takes effect
}


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _flush_interval(settings: Settings, configured: float | None) -> float:
    if configured is not None:
        return float(configured)
    if settings.prediction_log_flush_s is not None:
        return float(settings.prediction_log_flush_s)
    # Embedded DuckDB takes one writing process: leave the flush to `retailml monitor`.
    return 0.0 if settings.warehouse == "duckdb" else 60.0


def create_app(
    settings: Settings | None = None,
    *,
    registry: RegistryLike | None = None,
    online_store: OnlineStore | None = None,
    key_store_path: Path | str | None = None,
    config: Mapping[str, Any] | None = None,
    open_warehouse: Callable[[], Warehouse] | None = None,
) -> Flask:
    """Build the API. ``config`` overrides Flask/``RETAILML_*`` keys of :data:`DEFAULT_CONFIG`;
    ``open_warehouse`` is what the prediction-log flusher writes to (default: settings')."""
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

    refresh_s = app.config["RETAILML_MODEL_REFRESH_S"]
    models = ModelHolder(
        registry,
        app.config["RETAILML_MODEL_NAME"],
        app.config["RETAILML_MODEL_ALIAS"],
        refresh_s=float(settings.api_model_refresh_s if refresh_s is None else refresh_s),
        on_swap=on_swap,
        fast_path=bool(app.config["RETAILML_COMPILED_INFERENCE"]),
    )
    metrics.model_version.labels(model=models.name).set(0)
    models.load_now()  # synchronous first load; a failure leaves the app up but not ready
    if settings.warehouse != "duckdb":
        # Idle workers switch too. Not on embedded DuckDB: one process may hold the file at
        # a time, so there the registry is only read when requests come (and lazily).
        models.watch()

    keys = KeyStore(
        key_store_path or settings.api_keys_path,
        recheck_s=float(app.config["RETAILML_KEY_RECHECK_S"]),
    )
    if len(keys) == 0:
        log.warning("no active API key in %s: every /v1 request will get 401", keys.path)

    prediction_log = flusher = None
    if app.config["RETAILML_PREDICTION_LOG"]:
        spool = open_spool(settings)
        prediction_log = PredictionLogger(
            spool, on_drop=lambda n: metrics.prediction_log_dropped.inc(n)
        )
        interval = _flush_interval(settings, app.config["RETAILML_PREDICTION_LOG_FLUSH_S"])
        if interval > 0:
            if open_warehouse is None:
                from .. import runtime

                def open_warehouse() -> Warehouse:
                    return runtime.open_warehouse(settings)

            flusher = PredictionLogFlusher(
                spool,
                open_warehouse,
                interval,
                on_flush=lambda n: metrics.prediction_log_flushed.inc(n),
                on_error=lambda exc: metrics.prediction_log_flush_errors.inc(),
            )
            flusher.start()

    app.extensions[EXTENSION] = ServingState(
        settings=settings,
        models=models,
        store=online_store,
        keys=keys,
        metrics=metrics,
        prediction_log=prediction_log,
        flusher=flusher,
    )
    register_error_handlers(app)
    _register_request_hooks(app, metrics)
    register_blueprints(app)
    return app


def _register_request_hooks(app: Flask, metrics: ServingMetrics) -> None:
    @app.before_request
    def _start() -> None:
        # 128 random bits; `random` is reseeded in every forked worker, and is far cheaper
        # per request than os.urandom (a request id is not a secret).
        g.request_id = f"{random.getrandbits(128):032x}"
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.get("started")
        endpoint = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        elapsed = time.perf_counter() - started if started is not None else 0.0
        method = request.method if request.method in _METHODS else "OTHER"  # bounded labels
        metrics.observe_request(method, endpoint, response.status_code, elapsed)
        if g.get("request_id"):
            response.headers["X-Request-ID"] = g.request_id
        response.headers.setdefault("Cache-Control", "no-store")
        return response
