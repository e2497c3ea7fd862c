"""Held-out metrics sliced by customer group, and the largest gap between groups.

A slice is one value of one attribute (``country = 'FR'``). Slices with fewer than
``min_rows`` rows, or fewer than ``min_class_rows`` of either label, are reported but left out
of the gaps: the ROC AUC of a few hundred rows moves by +-0.03-0.05 from sampling alone, so
between four such slices a 0.1 gap can be pure noise. With no two comparable slices the
largest gap is ``None`` (nothing to block on, and the registry says so). The gap of a
metric over an attribute is the best slice minus the worst; the largest gap over all the
attributes for the limit's metric is what the promotion gate compares with its limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

SLICE_ATTRIBUTES: tuple[str, ...] = ("country", "signup_channel", "loyalty_tier")
GAP_METRICS: tuple[str, ...] = ("roc_auc", "recall", "false_positive_rate", "precision")
DEFAULT_FAIRNESS_METRIC = "roc_auc"
DEFAULT_MAX_FAIRNESS_GAP = 0.10
MISSING = "__missing__"


def slice_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Rows, label rate and the threshold metrics of one slice (AUCs need both classes)."""
    y = np.asarray(y).astype(int)
    predicted = np.asarray(score) >= threshold
    positives = int(y.sum())
    negatives = int(y.size - positives)
    tp = int((predicted & (y == 1)).sum())
    fp = int((predicted & (y == 0)).sum())
    both = positives > 0 and negatives > 0
    return {
        "rows": int(y.size),
        "positives": positives,
        "positive_rate": float(y.mean()) if y.size else None,
        "predicted_positive_rate": float(predicted.mean()) if y.size else None,
        "mean_score": float(np.mean(score)) if y.size else None,
        "roc_auc": float(roc_auc_score(y, score)) if both else None,
        "pr_auc": float(average_precision_score(y, score)) if both else None,
        "brier": float(brier_score_loss(y, score, labels=[0, 1])) if y.size else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / positives if positives else None,
        "false_positive_rate": fp / negatives if negatives else None,
    }


def fairness_report(
    frame: pd.DataFrame,
    y: np.ndarray,
    score: np.ndarray,
    threshold: float,
    *,
    attributes: Sequence[str] = SLICE_ATTRIBUTES,
    metric: str = DEFAULT_FAIRNESS_METRIC,
    max_gap: float | None = DEFAULT_MAX_FAIRNESS_GAP,
    min_rows: int = 500,
    min_class_rows: int = 50,
) -> dict[str, Any]:
    """Per-slice metrics, per-attribute gaps and the largest gap of ``metric``.

    ``passed`` is ``None`` without a limit, else whether the largest gap is within it.
    """
    if metric not in GAP_METRICS:
        raise ValueError(f"fairness metric must be one of {GAP_METRICS}, not {metric!r}")
    y = np.asarray(y).astype(int)
    score = np.asarray(score, dtype=float)
    slices: dict[str, dict[str, dict[str, Any]]] = {}
    gaps: dict[str, dict[str, Any]] = {}
    for attribute in attributes:
        values = frame[attribute].astype(object).where(frame[attribute].notna(), MISSING)
        values = values.to_numpy()
        per_value: dict[str, dict[str, Any]] = {}
        for value in sorted({str(v) for v in values}):
            mask = values == value
            stats = slice_metrics(y[mask], score[mask], threshold)
            stats["in_gap"] = bool(
                stats["rows"] >= min_rows
                and stats["positives"] >= min_class_rows
                and stats["rows"] - stats["positives"] >= min_class_rows
            )
            per_value[value] = stats
        slices[attribute] = per_value
        gaps[attribute] = {m: _gap(per_value, m) for m in GAP_METRICS}
    largest = _largest(gaps, metric)
    passed = None
    if max_gap is not None:
        passed = largest is None or largest["value"] <= max_gap
    return {
        "attributes": list(attributes),
        "metric": metric,
        "max_gap": max_gap,
        "min_rows": min_rows,
        "min_class_rows": min_class_rows,
        "slices": slices,
        "gaps": gaps,
        "largest_gap": largest,
        "passed": passed,
    }


def _gap(per_value: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, Any] | None:
    eligible = {
        value: stats[metric]
        for value, stats in per_value.items()
        if stats["in_gap"] and stats.get(metric) is not None
    }
    if len(eligible) < 2:
        return None
    best = max(eligible, key=lambda v: eligible[v])
    worst = min(eligible, key=lambda v: eligible[v])
    return {
        "value": float(eligible[best] - eligible[worst]),
        "highest": {"group": best, "value": float(eligible[best])},
        "lowest": {"group": worst, "value": float(eligible[worst])},
        "groups": len(eligible),
    }


def _largest(gaps: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, Any] | None:
    candidates = [
        {"attribute": attribute, "metric": metric, **gap[metric]}
        for attribute, gap in gaps.items()
        if gap.get(metric) is not None
    ]
    return max(candidates, key=lambda g: g["value"]) if candidates else None


def describe_gap(largest: Mapping[str, Any] | None) -> str:
    """``roc_auc gap 0.12 over country (NL 0.93 vs FR 0.81)``."""
    if not largest:
        return "no attribute has two slices large enough to compare"
    return (
        f"{largest['metric']} gap {largest['value']:.3f} over {largest['attribute']} "
        f"({largest['highest']['group']} {largest['highest']['value']:.3f} vs "
        f"{largest['lowest']['group']} {largest['lowest']['value']:.3f})"
    )
