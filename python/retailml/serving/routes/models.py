"""Metadata of the served model, and an admin-triggered reload."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..state import require_scope, state
from ._common import served_model

bp = Blueprint("models", __name__, url_prefix="/v1/models")


@bp.get("/churn")
@require_scope("predict", "admin")
def churn_model() -> Response:
    """Version, metrics and training fingerprint of the churn model being served."""
    st = state()
    model = served_model()
    return jsonify({**model.describe(), "alias": st.models.alias, "status": st.models.status()})


@bp.post("/churn:reload")
@require_scope("admin")
def reload_churn_model() -> Response:
    """Check the registry now (instead of waiting for the refresh interval)."""
    st = state()
    st.models.load_now()
    model = served_model()
    return jsonify({**model.describe(), "alias": st.models.alias, "status": st.models.status()})
