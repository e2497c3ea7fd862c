"""Model training (churn: scikit-learn, demand: statsmodels) and batch scoring.

Every entry point takes its clients (a ``Warehouse``, a ``ModelRegistry``) as arguments.
"""

from __future__ import annotations

from .common import TrainingDataError, TrainResult, feature_frame

__all__ = [
    "ScoreResult",
    "ScoringError",
    "TrainResult",
    "TrainingDataError",
    "feature_frame",
    "score_customers",
    "train_churn",
    "train_demand",
]


def __getattr__(name: str) -> object:
    # The trainers import scikit-learn/statsmodels: load them only when asked for.
    if name == "train_churn":
        from .churn import train_churn

        return train_churn
    if name == "train_demand":
        from .demand import train_demand

        return train_demand
    if name in ("score_customers", "ScoreResult", "ScoringError"):
        from . import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
