"""What the app holds (model, online store, keys, logs, metrics) and the scope check."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, g, request

from ..config import Settings
from ..features.online_store import OnlineStore
from .auth import KeyStore, bearer_token
from .errors import ApiError
from .metrics import ServingMetrics
from .model import ModelHolder
from .prediction_log import PredictionLogFlusher, PredictionLogger

EXTENSION = "retailml"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class ServingState:
    settings: Settings
    models: ModelHolder
    store: OnlineStore
    keys: KeyStore
    metrics: ServingMetrics
    prediction_log: PredictionLogger | None
    flusher: PredictionLogFlusher | None = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued to the spool and stop the background threads."""
        self.models.close()
        if self.flusher is not None:
            self.flusher.close(timeout_s)
        if self.prediction_log is not None:
            self.prediction_log.close(timeout_s)


def state() -> ServingState:
    return current_app.extensions[EXTENSION]


def require_scope(*scopes: str) -> Callable[[F], F]:
    """401 without a valid bearer key, 403 when the key has none of ``scopes``."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            challenge = {"WWW-Authenticate": 'Bearer realm="retailml"'}
            token = bearer_token(request.headers.get("Authorization"))
            if token is None:
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing API key: send 'Authorization: Bearer <token>'",
                    headers=challenge,
                )
            key = state().keys.verify(token)
            if key is None:
                raise ApiError(401, "unauthorized", "invalid or revoked API key", headers=challenge)
            if not set(scopes) & set(key.scopes):
                wanted = " or ".join(repr(s) for s in scopes)
                raise ApiError(
                    403,
                    "forbidden",
                    f"API key {key.key_id!r} lacks the {wanted} scope",
                    {"required_scopes": list(scopes), "key_scopes": list(key.scopes)},
                )
            g.api_key = key
            return view(*args, **kwargs)

        wrapper.required_scopes = scopes  # type: ignore[attr-defined]  # for the OpenAPI test
        return wrapper  # type: ignore[return-value]

    return decorator
