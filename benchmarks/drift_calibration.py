"""Calibration of the drift monitor on the simulator, through the real pipeline.

    .venv/bin/python benchmarks/drift_calibration.py --days 730 --drift-day 601

Simulates one business (the local S3 and MongoDB servers, DuckDB) whose drift scenario starts
on day ``--drift-day``, runs ingest -> dbt build, and judges every weekly window of the churn
training mart with the production monitor (:mod:`retailml.evaluation.drift`): before the
drift the business is the no-drift business (same seed, same draws), so those windows give
the false-alarm rate (target: no dataset-level alarm in at least 95 %); after it, the delay
to the first alarm (target: within 7 simulated days). The last line is
``windows= false_alarm_rate= detection_delay_days=`` (plus the calm and drift window counts).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from retailml import pipeline, runtime
from retailml.config import load_settings
from retailml.evaluation.drift import calibrate
from retailml.monitoring.drift import DriftThresholds
from retailml.sources import local_services

START = date(2025, 1, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument(
        "--drift-day", type=int, default=601, help="day index of the drift start (601: a Tuesday)"
    )
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary one")
    args = parser.parse_args(argv)
    drift_start = START + timedelta(days=args.drift_day)
    thresholds = DriftThresholds()
    with tempfile.TemporaryDirectory(prefix="retailml-drift-calibration-") as tmp:
        settings = load_settings(data_dir=args.data_dir or Path(tmp))
        try:
            started = time.perf_counter()
            options = pipeline.SimulateOptions(
                days=args.days, initial_customers=args.customers, seed=args.seed,
                start_date=START, drift_start=drift_start,
            )  # fmt: skip
            pipeline.simulate(settings, options)
            pipeline.ingest(settings)
            pipeline.transform(settings)
            print(f"simulate + ingest + dbt build: {time.perf_counter() - started:.1f} s")
            warehouse = runtime.open_warehouse(settings)
            try:
                started = time.perf_counter()
                result = calibrate(
                    warehouse, drift_start=drift_start, thresholds=thresholds, n_bins=args.bins
                )
                seconds = time.perf_counter() - started
            finally:
                warehouse.close()
        finally:
            local_services.stop(settings.services_dir)
    for w in result.windows:
        mark = "ALARM" if w.alarm else "     "
        phase = "drift" if w.after_drift else "calm "
        print(
            f"{w.cutoff} {phase} vs {w.reference_cutoff} {w.rows:6d} rows {mark} "
            f"{', '.join(w.drifted)}"
        )
    calm = result.calm_windows
    delay = result.detection_delay_days
    print(
        f"business          {args.days} days, {args.customers} initial customers, seed {args.seed}, "
        f"drift from {drift_start} ({drift_start:%A})"
    )
    print(
        f"rule              BH-adjusted p <= {thresholds.alpha:g} and PSI >= {thresholds.psi:g} "
        f"or Wasserstein/sd >= {thresholds.wasserstein:g} or JS >= {thresholds.js:g} "
        f"or unseen-category share >= {thresholds.new_category_share:g}; "
        f"{args.bins} bins"
    )
    print(
        f"calm windows      {len(calm)}, {sum(w.alarm for w in calm)} alarms; "
        f"detection delay {delay} days; {seconds:.1f} s for {len(result.windows)} windows"
    )
    print(
        f"windows={len(result.windows)} false_alarm_rate={result.false_alarm_rate:.4f} "
        f"detection_delay_days={'none' if delay is None else delay} calm_windows={len(calm)} "
        f"drift_windows={len(result.windows) - len(calm)}"
    )


if __name__ == "__main__":
    main()
