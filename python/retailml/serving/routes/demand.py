"""Demand forecasts per category, from the online store."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from ..errors import ApiError
from ..state import require_scope
from ..validation import forecast_request
from ._common import online_forecast

bp = Blueprint("demand", __name__, url_prefix="/v1/demand")


@bp.get("/forecast")
@require_scope("predict")
def forecast() -> Response:
    """``?category=<name>&horizon=<days>``: the daily forecast for the next ``horizon`` days."""
    req = forecast_request(
        request.args,
        max_horizon=current_app.config["RETAILML_MAX_HORIZON"],
        default_horizon=current_app.config["RETAILML_DEFAULT_HORIZON"],
    )
    rows = online_forecast(req.category, req.horizon)
    if not rows:
        raise ApiError(
            404,
            "forecast_not_found",
            f"no demand forecast for category {req.category!r}",
            {"category": req.category},
        )
    return jsonify(
        {
            "request_id": g.request_id,
            "category": req.category,
            "horizon": req.horizon,
            "available_horizon": max(r["horizon_day"] for r in rows),
            "model_version": rows[0].get("model_version"),
            "forecast": [
                {k: v for k, v in r.items() if k not in ("category", "model_version")} for r in rows
            ],
        }
    )
