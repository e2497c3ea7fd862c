"""Request parsing and validation: pure functions raising :class:`ApiError` with a clear 4xx."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..features.spec import CATEGORICAL_FEATURES, ENTITY_KEY, FEATURES, NUMERIC_FEATURES
from .errors import ApiError

MAX_ID_LENGTH = 128
MAX_CATEGORY_LENGTH = 100


def _bad(message: str, **details: Any) -> ApiError:
    return ApiError(400, "invalid_request", message, details or None)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes, mimetype: str | None) -> Any:
    """Decode a request body: 415 for a non-JSON content type, 400 for malformed JSON."""
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    if not raw.strip():
        raise _bad("request body is empty; send a JSON object")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise _bad("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _bad(f"malformed JSON: {exc}") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_fields(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(
            f"unknown field(s) in {where}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
            unknown=unknown,
        )


def customer_id(value: Any, where: str = ENTITY_KEY) -> str:
    if not isinstance(value, str):
        raise _bad(f"{where} must be a string, got {json_type(value)}")
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable() or value != value.strip():
        raise _bad(
            f"{where} must be 1-{MAX_ID_LENGTH} printable characters without surrounding spaces"
        )
    return value


def features(value: Any, where: str = "features") -> dict[str, Any]:
    """A complete feature record: every feature present, numbers finite, categories strings."""
    record = _object(value, where)
    missing = [f for f in FEATURES if f not in record]
    unknown = sorted(set(record) - set(FEATURES))
    invalid: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for name in NUMERIC_FEATURES:
        if name not in record:
            continue
        v = record[name]
        if isinstance(v, bool) or not isinstance(v, int | float):
            invalid[name] = f"must be a number, got {json_type(v)}"
            continue
        try:
            number = float(v)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            invalid[name] = "must be a finite number"
            continue
        clean[name] = number
    for name in CATEGORICAL_FEATURES:
        if name not in record:
            continue
        v = record[name]
        if not isinstance(v, str):
            invalid[name] = f"must be a string, got {json_type(v)}"
        elif len(v) > MAX_CATEGORY_LENGTH:
            invalid[name] = f"must be at most {MAX_CATEGORY_LENGTH} characters"
        else:
            clean[name] = v
    if missing or unknown or invalid:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown: {', '.join(unknown)}")
        if invalid:
            parts.append("invalid: " + "; ".join(f"{k} {v}" for k, v in invalid.items()))
        details = {"missing": missing, "unknown": unknown, "invalid": invalid}
        raise _bad(f"{where} are not valid ({' | '.join(parts)})", **details)
    return clean


def _explain(body: Mapping[str, Any]) -> bool:
    value = body.get("explain", False)
    if not isinstance(value, bool):
        raise _bad(f"explain must be a boolean, got {json_type(value)}")
    return value


@dataclass(frozen=True)
class ScoreRequest:
    """One customer to score: by id (features from the online store) or by features."""

    customer_id: str | None
    features: dict[str, Any] | None
    explain: bool


def score_request(body: Any) -> ScoreRequest:
    body = _object(body, "request body")
    _check_fields(body, {ENTITY_KEY, "features", "explain"}, "request body")
    explain = _explain(body)
    if (ENTITY_KEY in body) == ("features" in body):
        raise _bad(f"send exactly one of {ENTITY_KEY!r} or 'features'")
    if ENTITY_KEY in body:
        return ScoreRequest(customer_id(body[ENTITY_KEY]), None, explain)
    return ScoreRequest(None, features(body["features"]), explain)


class BatchTooLarge(ApiError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            413,
            "batch_too_large",
            f"batch of {size} items exceeds the limit of {limit}; split it",
            {"size": size, "limit": limit},
        )


@dataclass(frozen=True)
class BatchRequest:
    """Many customers to score: ids (online store) or feature records, not mixed."""

    customer_ids: list[str] | None
    records: list[dict[str, Any]] | None
    explain: bool


def batch_request(body: Any, max_items: int) -> BatchRequest:
    body = _object(body, "request body")
    _check_fields(body, {"customer_ids", "records", "explain"}, "request body")
    explain = _explain(body)
    if ("customer_ids" in body) == ("records" in body):
        raise _bad("send exactly one of 'customer_ids' or 'records'")
    key = "customer_ids" if "customer_ids" in body else "records"
    items = body[key]
    if not isinstance(items, list):
        raise _bad(f"{key} must be an array, got {json_type(items)}")
    if not items:
        raise _bad(f"{key} must not be empty")
    if len(items) > max_items:
        raise BatchTooLarge(len(items), max_items)
    if key == "customer_ids":
        ids = [customer_id(v, f"customer_ids[{i}]") for i, v in enumerate(items)]
        return BatchRequest(ids, None, explain)
    records = [features(v, f"records[{i}]") for i, v in enumerate(items)]
    return BatchRequest(None, records, explain)


@dataclass(frozen=True)
class ForecastRequest:
    category: str
    horizon: int


def forecast_request(
    args: Mapping[str, str], max_horizon: int, default_horizon: int
) -> ForecastRequest:
    _check_fields(args, {"category", "horizon"}, "query string")
    category = args.get("category")
    if category is None or not category.strip():
        raise _bad("query parameter 'category' is required")
    if len(category) > MAX_CATEGORY_LENGTH or not category.isprintable():
        raise _bad(f"category must be 1-{MAX_CATEGORY_LENGTH} printable characters")
    raw = args.get("horizon")
    if raw is None:
        horizon = default_horizon
    else:
        try:
            horizon = int(raw)
        except ValueError:
            raise _bad(f"horizon must be an integer, got {raw[:20]!r}") from None
    if not 1 <= horizon <= max_horizon:
        raise _bad(f"horizon must be between 1 and {max_horizon} days, got {horizon}")
    return ForecastRequest(category, horizon)
