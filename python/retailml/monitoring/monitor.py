"""One monitoring run: data and prediction drift (:mod:`.drift`), realized performance once
labels matured (:mod:`.performance`), and the charts of what moved (:mod:`.charts`).

The :class:`MonitorReport` is the contract the orchestration reads: ``needs_retraining`` and
``reasons`` (drift over its thresholds, or realized AUC decayed), ``summary()`` for the logs
and ``markdown()`` for the Prefect artifact. Results are in ``mlops.drift_results`` and
``mlops.model_performance`` (for BI); the charts are PNG files in ``charts_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..features.spec import CUSTOMER_FEATURES_TABLE
from ..registry import ModelRegistry
from ..warehouse.base import Warehouse
from .charts import write_charts
from .drift import SCORE_FEATURE, DriftReport, DriftThresholds, check_drift
from .performance import AUC_DROP, PerformanceReport, check_performance, performance_table

CHART_METRICS = ("roc_auc", "brier", "calibration_gap")


@dataclass(frozen=True)
class MonitorReport:
    drift: DriftReport
    performance: PerformanceReport
    charts: tuple[Path, ...] = ()

    @property
    def needs_retraining(self) -> bool:
        return self.drift.needs_retraining or self.performance.needs_retraining

    @property
    def reasons(self) -> list[str]:
        return [*self.drift.reasons, *self.performance.reasons]

    @property
    def drifted_features(self) -> list[str]:
        return self.drift.drifted_features

    def summary(self) -> str:
        return f"{self.drift.summary()}; {self.performance.summary()}"

    def markdown(self) -> str:
        charts = "".join(f"- `{path}`\n" for path in self.charts)
        return (
            self.drift.markdown()
            + "\n"
            + self.performance.markdown()
            + (f"\n### Charts\n\n{charts}" if charts else "")
        )


def run_monitor(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    horizon_days: int,
    thresholds: DriftThresholds | None = None,
    prediction_window_days: int | None = 7,
    auc_drop: float = AUC_DROP,
    charts_dir: Path | None = None,
    current_table: str = CUSTOMER_FEATURES_TABLE,
    model_name: str = "churn",
    run_at: datetime | None = None,
) -> MonitorReport:
    """Drift of ``current_table`` and of the served scores against the production version's
    reference, realized performance of every version's matured scores, and (with
    ``charts_dir``) a chart per drifted feature plus the metrics over time."""
    run_at = run_at or datetime.now(UTC)
    drift = check_drift(
        warehouse,
        registry,
        current_table=current_table,
        model_name=model_name,
        thresholds=thresholds or DriftThresholds(),
        prediction_window_days=prediction_window_days,
        run_at=run_at,
    )
    performance = check_performance(
        warehouse,
        registry,
        horizon_days=horizon_days,
        model_name=model_name,
        auc_drop=auc_drop,
        run_at=run_at,
    )
    charts: list[Path] = []
    if charts_dir is not None:
        charts = _charts(drift, performance, charts_dir)
    return MonitorReport(drift, performance, tuple(charts))


def _charts(drift: DriftReport, performance: PerformanceReport, out_dir: Path) -> list[Path]:
    paths: list[Path] = []
    reference, current, served = drift.reference, drift.current, drift.served
    if reference is not None and current is not None:
        drifted = set(drift.drifted_features)
        paths += write_charts(
            out_dir,
            reference=reference.only(
                [f for f in reference.numeric if f in drifted],
                [f for f in reference.categorical if f in drifted],
                with_scores=served is not None,
            ),
            current_numeric=current.numeric,
            current_categorical=current.categorical,
            current_scores=None if served is None else served.numeric[SCORE_FEATURE],
        )
    if performance.weeks:  # every matured week, as this run wrote them
        paths += write_charts(
            out_dir, performance=performance_table(performance), metrics=CHART_METRICS
        )
    return paths
