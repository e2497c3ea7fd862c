"""Calibration of the drift monitor on a simulated business where the truth is known: no
dataset-level alarm in at least 95 % of the windows before the drift scenario starts, an
alarm within 7 simulated days after (the README's figures come from
``benchmarks/drift_calibration.py``, the same code on a larger business)."""

from __future__ import annotations

from datetime import date, timedelta

from retailml import pipeline, runtime
from retailml.config import Settings
from retailml.evaluation.drift import calibrate

START = date(2025, 1, 1)
DRIFT_DAY = 356  # a Tuesday: the first weekly window sees six days of it


def test_the_monitor_is_quiet_before_the_drift_and_alarms_within_a_week(
    settings: Settings,
) -> None:
    drift_start = START + timedelta(days=DRIFT_DAY)
    options = pipeline.SimulateOptions(
        days=420, initial_customers=1_500, seed=42, start_date=START, drift_start=drift_start
    )
    pipeline.simulate(settings, options)
    pipeline.ingest(settings)
    pipeline.transform(settings)
    warehouse = runtime.open_warehouse(settings)
    try:
        result = calibrate(warehouse, drift_start=drift_start)
    finally:
        warehouse.close()

    calm = result.calm_windows
    assert len(calm) >= 10 and len(result.windows) > len(calm)
    assert result.false_alarm_rate <= 0.05, [w for w in calm if w.alarm]
    assert result.detection_delay_days is not None and result.detection_delay_days <= 7
    first = next(w for w in result.windows if w.after_drift and w.alarm)
    # the campaign's new sign-up channel is what shows first
    assert "signup_channel" in first.drifted
