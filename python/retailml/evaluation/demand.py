"""The demand model's backtest against the simulator's expected demand.

The backtest forecasts of a version are in ``mlops.demand_backtest`` (with each origin's MASE
scale). Against the truth they give:

* ``mase_vs_truth``: the MASE of the forecasts with the expected demand in place of the
  actuals (how far the forecast is from the true mean, in units of seasonal-naive error);
* ``mase_oracle``: the MASE of the expected demand itself as the forecast (the noise floor:
  no forecast of daily units can expect to do better);
* ``mae_over_oracle``: the model's MAE over the oracle's MAE on the same days (1 = as good
  as knowing the true mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..registry import ModelRegistry
from ..training.demand import BACKTEST_TABLE, backtest_scores
from ..warehouse.base import Warehouse
from .truth import TruthError, read_demand_truth


@dataclass(frozen=True)
class DemandEvaluation:
    model_name: str
    model_version: int
    forecasts: int
    origins: int
    mase: float
    mase_seasonal_naive: float
    mase_vs_truth: float
    mase_seasonal_naive_vs_truth: float
    mase_oracle: float
    mae_over_oracle: float
    interval_coverage_95: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_demand(
    warehouse: Warehouse,
    registry: ModelRegistry,
    truth_dir: Path,
    *,
    model_name: str = "demand",
    version: int | str = "production",
) -> DemandEvaluation:
    """Compare a version's stored backtest forecasts with the expected demand."""
    mv = registry.get(model_name, version)
    frame = warehouse.query_arrow(
        f"select * from {BACKTEST_TABLE} where model_name = ? and model_version = ?",
        [model_name, mv.version],
    ).to_pandas()
    if frame.empty:
        raise TruthError(f"{model_name} v{mv.version} has no rows in {BACKTEST_TABLE}")
    frame["forecast_date"] = pd.to_datetime(frame["forecast_date"]).dt.date
    truth = read_demand_truth(truth_dir, sorted(set(frame["forecast_date"])))
    joined = frame.merge(
        truth.rename(columns={"order_date": "forecast_date"}),
        on=["category", "forecast_date"],
        how="left",
        validate="many_to_one",
    )
    missing = int(joined["expected_units"].isna().sum())
    if missing:
        raise TruthError(f"{missing} backtest forecasts have no expected demand in the truth")
    keys = ["category", "origin_date"]
    scaled = joined.assign(
        vs_truth=(joined["units_forecast"] - joined["expected_units"]).abs() / joined["mase_scale"],
        naive_vs_truth=(joined["seasonal_naive"] - joined["expected_units"]).abs()
        / joined["mase_scale"],
        oracle=(joined["actual"] - joined["expected_units"]).abs() / joined["mase_scale"],
        model_error=(joined["actual"] - joined["units_forecast"]).abs(),
        oracle_error=(joined["actual"] - joined["expected_units"]).abs(),
    )
    per_origin = scaled.groupby(keys)[["vs_truth", "naive_vs_truth", "oracle"]].mean()
    scores = backtest_scores(frame)
    return DemandEvaluation(
        model_name=model_name,
        model_version=mv.version,
        forecasts=len(joined),
        origins=len(per_origin),
        mase=float(scores["mase"]),
        mase_seasonal_naive=float(scores["mase_seasonal_naive"]),
        mase_vs_truth=float(per_origin["vs_truth"].mean()),
        mase_seasonal_naive_vs_truth=float(per_origin["naive_vs_truth"].mean()),
        mase_oracle=float(per_origin["oracle"].mean()),
        mae_over_oracle=float(scaled["model_error"].mean() / scaled["oracle_error"].mean()),
        interval_coverage_95=float(scores["interval_coverage_95"]),
    )
