"""Monitoring: feature drift of the scored population against the model's training data."""

from __future__ import annotations

from .drift import (
    DRIFT_REFERENCE_TABLE,
    DRIFT_RESULTS_TABLE,
    DriftError,
    DriftReport,
    FeatureDrift,
    check_drift,
    jensen_shannon,
    psi,
)

__all__ = [
    "DRIFT_REFERENCE_TABLE",
    "DRIFT_RESULTS_TABLE",
    "DriftError",
    "DriftReport",
    "FeatureDrift",
    "check_drift",
    "jensen_shannon",
    "psi",
]
