"""Churn scoring: one customer or a batch, by id (online features) or by feature values."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify

from ...features.spec import FEATURES
from ..errors import ApiError
from ..model import PredictionError, ServedModel
from ..prediction_log import PredictionRecord
from ..state import require_scope, state
from ..validation import batch_request, score_request
from ._common import json_body, online_rows, served_model

bp = Blueprint("churn", __name__, url_prefix="/v1/churn")


def _feature_record(row: Mapping[str, Any]) -> dict[str, Any]:
    return {f: row.get(f) for f in FEATURES}


def _score(
    model: ServedModel, records: Sequence[Mapping[str, Any]], explain: bool
) -> tuple[list[float], list[list[dict]] | None]:
    try:
        scores = model.score(records)
        explanations = (
            model.explain(records, top=current_app.config["RETAILML_EXPLAIN_TOP"])
            if explain
            else None
        )
    except PredictionError as exc:
        raise ApiError(422, "model_rejected_features", str(exc)) from exc
    return scores, explanations


def _log(
    model: ServedModel,
    ids: Sequence[str | None],
    records: Sequence[Mapping[str, Any]],
    scores: Sequence[float],
    source: str,
) -> None:
    st = state()
    st.metrics.predictions.labels(model=model.name, source=source).inc(len(scores))
    if st.prediction_log is None:
        return
    now = dt.datetime.now(dt.UTC)
    latency_ms = (time.perf_counter() - g.started) * 1000.0
    many = len(scores) > 1
    st.prediction_log.log(
        [
            PredictionRecord(
                request_id=f"{g.request_id}-{i}" if many else g.request_id,
                predicted_at=now,
                model_name=model.name,
                model_version=model.version,
                customer_id=cid,
                features=record,
                score=score,
                latency_ms=latency_ms,
            )
            for i, (cid, record, score) in enumerate(zip(ids, records, scores, strict=True))
        ]
    )


def _model_ref(model: ServedModel) -> dict[str, Any]:
    return {"name": model.name, "version": model.version}


@bp.post("/score")
@require_scope("predict")
def score() -> Response:
    """Score one customer: ``{"customer_id": ...}`` or ``{"features": {...}}``."""
    req = score_request(json_body())
    model = served_model()
    as_of = None
    if req.customer_id is not None:
        row = online_rows([req.customer_id])[0]
        if row is None:
            raise ApiError(
                404,
                "customer_not_found",
                f"no online features for customer {req.customer_id!r}",
                {"customer_id": req.customer_id},
            )
        record, as_of, source = _feature_record(row), row.get("as_of_date"), "online_store"
    else:
        assert req.features is not None
        record, source = req.features, "request"
    scores, explanations = _score(model, [record], req.explain)
    _log(model, [req.customer_id], [record], scores, source)
    body: dict[str, Any] = {
        "request_id": g.request_id,
        "model": _model_ref(model),
        "customer_id": req.customer_id,
        "score": scores[0],
    }
    if as_of is not None:
        body["as_of_date"] = as_of
    if explanations is not None:
        body["explanation"] = explanations[0]
    return jsonify(body)


@bp.post("/score:batch")
@require_scope("predict")
def score_batch() -> Response:
    """Score many: ``{"customer_ids": [...]}`` or ``{"records": [{...}, ...]}``.

    Unknown ids do not fail the batch: their result carries an ``error`` instead of a score.
    """
    req = batch_request(json_body(), current_app.config["RETAILML_MAX_BATCH"])
    model = served_model()
    results: list[dict[str, Any]]
    if req.customer_ids is not None:
        rows = online_rows(req.customer_ids)
        found = [i for i, row in enumerate(rows) if row is not None]
        records = [_feature_record(rows[i]) for i in found]  # type: ignore[arg-type]
        scores, explanations = _score(model, records, req.explain) if records else ([], None)
        ids = [req.customer_ids[i] for i in found]
        _log(model, ids, records, scores, "online_store")
        results = [
            {
                "customer_id": cid,
                "error": {"code": "customer_not_found", "message": "no online features"},
            }
            for cid in req.customer_ids
        ]
        for n, i in enumerate(found):
            results[i] = {
                "customer_id": req.customer_ids[i],
                "score": scores[n],
                "as_of_date": rows[i].get("as_of_date"),  # type: ignore[union-attr]
            }
            if explanations is not None:
                results[i]["explanation"] = explanations[n]
    else:
        assert req.records is not None
        scores, explanations = _score(model, req.records, req.explain)
        _log(model, [None] * len(scores), req.records, scores, "request")
        results = [{"index": i, "score": s} for i, s in enumerate(scores)]
        if explanations is not None:
            for result, explanation in zip(results, explanations, strict=True):
                result["explanation"] = explanation
    return jsonify({"request_id": g.request_id, "model": _model_ref(model), "results": results})
