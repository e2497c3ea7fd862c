"""Model quality against the simulator's ground truth, through the real pipeline.

    .venv/bin/python benchmarks/model_quality.py --days 730 --customers 3000

Simulates a business into a fresh data dir (the local S3 and MongoDB servers, DuckDB by
default; ``RETAILML_WAREHOUSE=postgres RETAILML_PG_DATABASE=<scratch>`` for PostgreSQL), runs
ingest -> dbt build -> train (both models) -> score, then evaluates the versions just trained
with :mod:`retailml.evaluation`:

* churn, on the version's own held-out rows (re-read and checked against the hash recorded at
  training): the model's ROC AUC, the oracle's (the simulator's true P(no order in the
  horizon) as the score) and the recency rule's. Target: auc / oracle_auc >= 0.97.
* demand, on the version's rolling-origin backtest (``mlops.demand_backtest``): MASE against
  the actuals (scaled by the in-sample seasonal-naive error; target < 0.9), the seasonal-naive
  forecast's MASE, and ``mase_vs_truth``: the same MASE with the simulator's expected demand
  in place of the actuals; ``mase_oracle`` is the expected demand's own MASE (the noise floor).
* the point-in-time check of the built training mart.

Two years (the default) let the demand model learn the yearly season and the churn features
see full 365-day windows; ``--days 365`` is the README's one-year demo.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from retailml import pipeline, runtime
from retailml.config import load_settings
from retailml.evaluation import check_point_in_time, evaluate_churn, evaluate_demand
from retailml.sources import local_services


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary one")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="retailml-quality-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        settings = load_settings(data_dir=data_dir)
        timings: dict[str, float] = {}

        def stage(name: str, run):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            result = run()
            timings[name] = time.perf_counter() - started
            print(f"{name:<10} {timings[name]:7.1f} s  {pipeline.describe(result)[:150]}")
            return result

        try:
            options = pipeline.SimulateOptions(
                days=args.days, initial_customers=args.customers, seed=args.seed
            )
            stage("simulate", lambda: pipeline.simulate(settings, options))
            stage("ingest", lambda: pipeline.ingest(settings))
            stage("transform", lambda: pipeline.transform(settings))
            trained = stage("train", lambda: pipeline.train(settings))
            stage("score", lambda: pipeline.score(settings))

            warehouse = runtime.open_warehouse(settings)
            try:
                registry = runtime.open_registry(settings, warehouse)
                churn = evaluate_churn(
                    warehouse, registry, settings.truth_dir,
                    version=trained["churn"].version.version,
                )  # fmt: skip
                demand = evaluate_demand(
                    warehouse, registry, settings.truth_dir,
                    version=trained["demand"].version.version,
                )  # fmt: skip
                point_in_time = check_point_in_time(warehouse, customers=300)
            finally:
                warehouse.close()
        finally:
            local_services.stop(settings.services_dir)

    churn_metrics = trained["churn"].metrics
    print()
    print(
        f"business          {args.days} days, {args.customers} initial customers, seed {args.seed}"
    )
    print(f"churn model       {trained['churn'].version.params['estimator']} "
          f"({churn_metrics['selection']['folds']} time-ordered folds, "
          f"{len(churn_metrics['selection']['candidates'])} candidates)")  # fmt: skip
    print(f"held-out rows     {churn.rows} at cutoffs {churn.cutoff_dates[0]}..{churn.cutoff_dates[-1]}"
          f" (same rows as at training: {churn.holdout_matches})")  # fmt: skip
    print(
        f"ROC AUC           model {churn.auc:.4f}  oracle {churn.oracle_auc:.4f}  "
        f"recency rule {churn.baseline_auc:.4f}  model/oracle {churn.auc_over_oracle:.4f}"
    )
    print(f"Brier             model {churn.brier:.4f}  oracle {churn.oracle_brier:.4f}")
    print(f"at threshold      {churn_metrics['threshold']:.3f}: precision "
          f"{churn_metrics['precision']:.3f} recall {churn_metrics['recall']:.3f} "
          f"F1 {churn_metrics['f1']:.3f}")  # fmt: skip
    largest = churn_metrics["fairness"]["largest_gap"]
    print(f"fairness          largest {churn_metrics['fairness']['metric']} gap "
          f"{largest['value'] if largest else None} ({largest and largest['attribute']})")  # fmt: skip
    print(
        f"demand MASE       model {demand.mase:.4f}  seasonal naive "
        f"{demand.mase_seasonal_naive:.4f}  over {demand.origins} (category, origin) windows"
    )
    print(f"vs expected       model {demand.mase_vs_truth:.4f}  seasonal naive "
          f"{demand.mase_seasonal_naive_vs_truth:.4f}  oracle's own MASE {demand.mase_oracle:.4f}"
          f"  model MAE / oracle MAE {demand.mae_over_oracle:.3f}")  # fmt: skip
    print(f"95% intervals     coverage {demand.interval_coverage_95:.3f}")
    print(f"point in time     {point_in_time.rows_checked} rows of {point_in_time.customers} "
          f"customers, {point_in_time.violations} violations")  # fmt: skip
    print(
        f"training time     churn {trained['churn'].seconds:.1f} s, "
        f"demand {trained['demand'].seconds:.1f} s"
    )
    print(
        f"auc={churn.auc:.4f} oracle_auc={churn.oracle_auc:.4f} "
        f"auc_over_oracle={churn.auc_over_oracle:.4f} baseline_auc={churn.baseline_auc:.4f} "
        f"mase={demand.mase:.4f} mase_vs_truth={demand.mase_vs_truth:.4f} "
        f"mase_seasonal_naive={demand.mase_seasonal_naive:.4f} "
        f"mase_oracle={demand.mase_oracle:.4f} point_in_time_violations={point_in_time.violations}"
    )


if __name__ == "__main__":
    main()
