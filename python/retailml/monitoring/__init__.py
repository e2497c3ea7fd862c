"""Monitoring: data and prediction drift of the scored population against the model's
training reference (:mod:`.drift`, statistics in :mod:`.stats`), realized performance once
labels mature (:mod:`.performance`), charts (:mod:`.charts`); one run: :mod:`.monitor`.

Only :mod:`.drift` is re-exported here: the training imports it, and :mod:`.performance`
imports the training (import it, and :mod:`.monitor`, by their module names)."""

from __future__ import annotations

from .drift import (
    DRIFT_REFERENCE_TABLE,
    DRIFT_RESULTS_TABLE,
    CurrentCounts,
    DriftError,
    DriftReference,
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    build_reference,
    check_drift,
    compare,
    count_arrow,
    count_current,
)

__all__ = [
    "DRIFT_REFERENCE_TABLE",
    "DRIFT_RESULTS_TABLE",
    "CurrentCounts",
    "DriftError",
    "DriftReference",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "build_reference",
    "check_drift",
    "compare",
    "count_arrow",
    "count_current",
]
