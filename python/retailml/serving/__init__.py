"""The prediction API: Flask app factory, API keys, prediction log, gunicorn runner.

Public entry points (imported lazily so ``import retailml.serving`` stays cheap):
:func:`create_app`, :func:`serve`, :func:`create_key`, :func:`revoke_key`, :func:`list_keys`,
:func:`flush_prediction_log`, :func:`open_spool`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "create_app": ".app",
    "serve": ".server",
    "create_key": ".auth",
    "revoke_key": ".auth",
    "list_keys": ".auth",
    "flush_prediction_log": ".prediction_log",
    "open_spool": ".prediction_log",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
