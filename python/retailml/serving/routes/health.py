"""Liveness, readiness, Prometheus metrics and the OpenAPI document (no API key: for
probes, scrapers and client generators)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ..openapi import OPENAPI_PATH, openapi_document
from ..state import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers; says nothing about dependencies."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when a verified model is loaded and the online store answers, else 503."""
    st = state()
    st.models.current()  # a due refresh check starts here too, so probes retry a failed load
    model = st.models.status()
    store_ok = st.store.ping()
    ready = model["loaded"] and store_ok
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {
            "model": {"ok": model["loaded"], **model},
            "online_store": {"ok": store_ok, "kind": type(st.store).__name__},
        },
    }
    return jsonify(body), 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    st = state()
    return Response(st.metrics.render(), content_type=st.metrics.content_type)


@bp.get(OPENAPI_PATH)
def openapi() -> Response:
    """The OpenAPI 3.1 document of this app (limits as configured)."""
    return jsonify(openapi_document(current_app.config))
