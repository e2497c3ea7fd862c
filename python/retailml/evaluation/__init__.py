"""Evaluation against the simulator's ground truth, and data guarantees checked from the
outside. Reads ``<data_dir>/truth/``: never imported by the pipeline, only by benchmarks,
tests and people."""

from __future__ import annotations

from .churn import ChurnEvaluation, evaluate_churn
from .demand import DemandEvaluation, evaluate_demand
from .point_in_time import PointInTimeReport, check_point_in_time, point_in_time_violations
from .truth import read_churn_truth, read_demand_truth

__all__ = [
    "ChurnEvaluation",
    "DemandEvaluation",
    "PointInTimeReport",
    "check_point_in_time",
    "evaluate_churn",
    "evaluate_demand",
    "point_in_time_violations",
    "read_churn_truth",
    "read_demand_truth",
]
