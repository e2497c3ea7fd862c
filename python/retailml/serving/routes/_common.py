"""Helpers shared by the API blueprints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import request

from ...features.online_store import OnlineStoreError
from ..errors import ApiError
from ..model import ServedModel
from ..state import state
from ..validation import parse_json_body


def json_body() -> Any:
    """The request's JSON (413 over MAX_CONTENT_LENGTH, 415/400 otherwise invalid)."""
    return parse_json_body(request.get_data(cache=True), request.mimetype or None)


def served_model() -> ServedModel:
    """The model to use for this whole request (503 when none is loaded)."""
    model = state().models.current()
    if model is None:
        raise ApiError(
            503,
            "model_unavailable",
            "no verified model is loaded yet; see /readyz",
            state().models.status(),
        )
    return model


def online_rows(ids: Sequence[str]) -> list[dict[str, Any] | None]:
    try:
        return state().store.get_many(ids)
    except OnlineStoreError as exc:
        raise ApiError(
            503, "online_store_unavailable", f"the online feature store is unavailable: {exc}"
        ) from exc


def online_forecast(category: str, horizon: int) -> list[dict[str, Any]]:
    try:
        return state().store.get_forecast(category, horizon)
    except OnlineStoreError as exc:
        raise ApiError(
            503, "online_store_unavailable", f"the online feature store is unavailable: {exc}"
        ) from exc
