"""Calibration of the drift monitor on a simulated business, where the truth is known: the
drift scenario starts on a known date, and nothing drifts before it.

The windows are the weekly snapshots of the churn training mart (one row per customer per
cutoff, the model's features as of that cutoff). Each window is judged the way the daily
monitor judges the scored population: against the reference of the model that would be in
production then, trained on the latest cutoff whose labels had matured (``lag_weeks``
earlier: the churn horizon plus the weekly grid). The reference is built from that cutoff's
rows with the production code (:func:`~retailml.monitoring.drift.build_reference`), the
window is counted in the warehouse (:func:`~retailml.monitoring.drift.count_current`), the
verdict is :func:`~retailml.monitoring.drift.compare`'s.

A window before the drift that alarms is a false alarm; the detection delay is the days
from the drift start to the first window at or after it that alarms.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ..features.spec import CHURN_TRAINING_TABLE, CUTOFF, FEATURES
from ..monitoring.drift import (
    DEFAULT_BINS,
    DriftReference,
    DriftThresholds,
    build_reference,
    compare,
    count_current,
    dataset_verdict,
)
from ..warehouse.base import Warehouse, quote_ident


@dataclass(frozen=True)
class WindowVerdict:
    cutoff: date
    reference_cutoff: date
    rows: int
    alarm: bool
    drifted: tuple[str, ...]
    after_drift: bool


@dataclass(frozen=True)
class Calibration:
    windows: list[WindowVerdict]
    drift_start: date | None

    @property
    def calm_windows(self) -> list[WindowVerdict]:
        return [w for w in self.windows if not w.after_drift]

    @property
    def false_alarm_rate(self) -> float:
        calm = self.calm_windows
        return sum(w.alarm for w in calm) / len(calm) if calm else float("nan")

    @property
    def detection_delay_days(self) -> int | None:
        """Days from the drift start to the first alarm after it (None: never detected)."""
        if self.drift_start is None:
            return None
        for window in self.windows:
            if window.after_drift and window.alarm:
                return (window.cutoff - self.drift_start).days
        return None


def cutoffs(warehouse: Warehouse, table: str = CHURN_TRAINING_TABLE) -> list[date]:
    rows = warehouse.query_arrow(f"select distinct {CUTOFF} from {table} order by 1")
    return list(rows.column(CUTOFF).to_pylist())


def calibrate(
    warehouse: Warehouse,
    *,
    drift_start: date | None,
    thresholds: DriftThresholds | None = None,
    n_bins: int = DEFAULT_BINS,
    lag_weeks: int = 5,
    warmup_days: int = 182,
    table: str = CHURN_TRAINING_TABLE,
) -> Calibration:
    """Judge every weekly window from ``warmup_days`` after the first cutoff (the features
    need history) against the reference ``lag_weeks`` earlier; after ``drift_start`` the
    reference stays the last one before it (the model in production when drift began)."""
    thresholds = thresholds or DriftThresholds()
    all_cutoffs = cutoffs(warehouse, table)
    if len(all_cutoffs) <= lag_weeks:
        raise ValueError(f"{table} has {len(all_cutoffs)} cutoffs; calibration needs more")
    first = all_cutoffs[0] + timedelta(days=warmup_days)
    columns = ", ".join(quote_ident(c) for c in FEATURES)
    windows = []
    references: dict[date, DriftReference] = {}
    lag = timedelta(days=7 * lag_weeks)
    in_production = [c for c in all_cutoffs if drift_start and c + lag <= drift_start]
    for index, cutoff in enumerate(all_cutoffs):
        if cutoff < first or index < lag_weeks:
            continue
        after = drift_start is not None and cutoff >= drift_start
        ref_cutoff = all_cutoffs[index - lag_weeks]
        if after and in_production:  # the model in production when the drift began
            ref_cutoff = in_production[-1]
        if ref_cutoff not in references:
            rows = warehouse.query_arrow(
                f"select {columns} from {table} where {CUTOFF} = ?", [ref_cutoff]
            )
            references[ref_cutoff] = build_reference(rows, n_bins=n_bins)
        reference = references[ref_cutoff]
        current = count_current(warehouse, table, reference, where=f"{CUTOFF} = ?", params=[cutoff])
        features = compare(reference, current, thresholds=thresholds)
        windows.append(
            WindowVerdict(
                cutoff=cutoff,
                reference_cutoff=ref_cutoff,
                rows=current.rows,
                alarm=dataset_verdict(features, thresholds),
                drifted=tuple(f.feature for f in features if f.is_drifted),
                after_drift=after,
            )
        )
    return Calibration(windows, drift_start)
