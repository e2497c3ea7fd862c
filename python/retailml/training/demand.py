"""Demand model: per category daily units, statsmodels ETS (additive, damped trend, weekly
seasonality) plus a yearly Fourier term when there are >= 2 years of history.

Yearly seasonality of daily data is too long for an ETS seasonal state (365 initial values),
so it is fitted first by least squares on ``fourier_terms`` sine/cosine pairs and the ETS
model is fitted on what remains; forecasts add the two back together (the 95% interval is
the ETS interval shifted by the yearly term). Quality: a rolling-origin backtest, MASE
scaled by the in-sample seasonal-naive (lag 7) error, against the seasonal-naive forecast
itself. The registered artifact is JSON (:class:`StatsmodelsBundle`): forecasts are made
from the reloaded artifact, the same path any other consumer takes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from threadpoolctl import threadpool_limits

from ..features.spec import DEMAND_DAILY_TABLE
from ..registry import ModelNotFoundError, ModelRegistry, StatsmodelsBundle, StatsmodelsSpec
from ..warehouse.base import Warehouse
from .common import Progress, TrainingDataError, TrainResult, read_table, report, table_sha256

DEMAND_MODEL_NAME = "demand"
PROMOTION_METRIC = "mase"
FORECASTS_TABLE = "mlops.demand_forecasts"
SEASON = 7
YEAR_DAYS = 365.25
DEMAND_COLUMNS: dict[str, pa.DataType] = {
    "category": pa.string(),
    "order_date": pa.date32(),
    "units": pa.float64(),
}
FORECAST_SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("forecast_date", pa.date32()),
        ("horizon_day", pa.int64()),
        ("units_forecast", pa.float64()),
        ("lower_95", pa.float64()),
        ("upper_95", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class DemandConfig:
    """How each category's model is specified and backtested (stored as the version's params)."""

    damped_trend: bool = True
    yearly_min_days: int = 730
    fourier_terms: int = 3
    min_days: int = 8 * SEASON
    backtest_origins: int = 3
    backtest_step_days: int = SEASON

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemandConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# -- series and terms (pure) ---------------------------------------------------------------
def daily_series(data: pa.Table) -> dict[str, pd.Series]:
    """Units per category as daily series (missing days zero-filled), sorted by date."""
    frame = data.to_pandas()
    series = {}
    for category, part in frame.groupby("category", sort=True):
        s = part.groupby(pd.to_datetime(part["order_date"]))["units"].sum().sort_index()
        index = pd.date_range(s.index.min(), s.index.max(), freq="D")
        series[str(category)] = s.reindex(index, fill_value=0.0).astype(float)
    return series


def fourier_terms(index: pd.DatetimeIndex, terms: int, period: float = YEAR_DAYS) -> np.ndarray:
    """``2 * terms`` yearly sine/cosine columns on the absolute day number (any date range)."""
    day = (index.values.astype("datetime64[D]").astype(np.int64)).astype(float)
    columns = []
    for k in range(1, terms + 1):
        columns += [np.sin(2 * np.pi * k * day / period), np.cos(2 * np.pi * k * day / period)]
    return np.column_stack(columns) if columns else np.empty((len(index), 0))


def yearly_component(index: pd.DatetimeIndex, coef: list[float] | None) -> np.ndarray:
    if not coef:
        return np.zeros(len(index))
    return fourier_terms(index, len(coef) // 2) @ np.asarray(coef)


def seasonal_naive(train: np.ndarray, horizon: int, period: int = SEASON) -> np.ndarray:
    """Repeat the last ``period`` observations."""
    last = np.asarray(train, dtype=float)[-period:]
    return np.array([last[i % period] for i in range(horizon)])


def mase(
    actual: np.ndarray, forecast: np.ndarray, train: np.ndarray, period: int = SEASON
) -> float:
    """Mean absolute error scaled by the in-sample seasonal-naive error (NaN if that is 0)."""
    train = np.asarray(train, dtype=float)
    scale = np.mean(np.abs(train[period:] - train[:-period])) if train.size > period else 0.0
    if not np.isfinite(scale) or scale == 0:
        return float("nan")
    return float(np.mean(np.abs(np.asarray(actual) - np.asarray(forecast))) / scale)


# -- fitting -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CategoryModel:
    spec: StatsmodelsSpec
    yearly_coef: list[float] | None
    description: str


def fit_category(y: pd.Series, config: DemandConfig) -> CategoryModel:
    """Fit one category (yearly Fourier by least squares if long enough, then ETS)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    coef: list[float] | None = None
    residual = y.astype(float)
    if len(y) >= config.yearly_min_days and config.fourier_terms > 0:
        terms = fourier_terms(y.index, config.fourier_terms)
        design = np.column_stack([np.ones(len(y)), terms])
        solution, *_ = np.linalg.lstsq(design, y.to_numpy(dtype=float), rcond=None)
        coef = [float(c) for c in solution[1:]]
        residual = y - terms @ solution[1:]
    attempts: list[dict[str, Any]] = []
    if config.damped_trend:
        attempts.append({"trend": "add", "damped_trend": True})
    attempts.append({"trend": None, "damped_trend": False})
    last_error: Exception | None = None
    for trend in attempts:
        init_kwargs = {"error": "add", "seasonal": "add", "seasonal_periods": SEASON, **trend}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = ETSModel(residual, **init_kwargs).fit(disp=False)
            if not np.all(np.isfinite(np.asarray(results.params, dtype=float))):
                raise ValueError("non-finite parameters")
        except Exception as exc:  # statsmodels raises many types on degenerate series
            last_error = exc
            continue
        description = f"ETS(A,{'Ad' if trend['trend'] else 'N'},A) weekly" + (
            f" + yearly Fourier({len(coef) // 2})" if coef else ""
        )
        return CategoryModel(StatsmodelsSpec.from_results(results, init_kwargs), coef, description)
    raise ValueError(f"no ETS specification could be fitted: {last_error}")


def forecast_frame(
    bundle: StatsmodelsBundle, horizon_days: int, *, categories: list[str] | None = None
) -> pd.DataFrame:
    """Forecasts of a (reloaded) demand bundle: category, forecast_date, horizon_day,
    units_forecast, lower_95, upper_95 (clipped at 0)."""
    frames = []
    yearly = (bundle.extra or {}).get("yearly_coef", {})
    for category in categories or sorted(bundle.specs):
        spec = bundle.specs[category]
        results = bundle.results(category)
        n = len(spec.endog)
        summary = results.get_prediction(start=n, end=n + horizon_days - 1).summary_frame(
            alpha=0.05
        )
        lower = summary["pi_lower"] if "pi_lower" in summary else summary["mean_ci_lower"]
        upper = summary["pi_upper"] if "pi_upper" in summary else summary["mean_ci_upper"]
        dates = pd.date_range(spec.index[-1] + pd.Timedelta(days=1), periods=horizon_days)
        season = yearly_component(dates, yearly.get(category))
        frames.append(
            pd.DataFrame(
                {
                    "category": category,
                    "forecast_date": dates.date,
                    "horizon_day": np.arange(1, horizon_days + 1),
                    "units_forecast": np.maximum(summary["mean"].to_numpy() + season, 0.0),
                    "lower_95": np.maximum(lower.to_numpy() + season, 0.0),
                    "upper_95": np.maximum(upper.to_numpy() + season, 0.0),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _forecast_fitted(model: CategoryModel, horizon: int) -> np.ndarray:
    bundle = StatsmodelsBundle({"c": model.spec}, {"yearly_coef": {"c": model.yearly_coef}})
    return forecast_frame(bundle, horizon)["units_forecast"].to_numpy()


def backtest(y: pd.Series, config: DemandConfig, horizon: int) -> dict[str, Any]:
    """Rolling-origin backtest: MASE of the model and of seasonal naive, averaged over origins
    (each origin refits on the data before it)."""
    model_scores, naive_scores, origins = [], [], []
    for k in range(config.backtest_origins):
        origin = len(y) - horizon - k * config.backtest_step_days
        if origin < config.min_days:
            break
        train, actual = y.iloc[:origin], y.iloc[origin : origin + horizon].to_numpy()
        try:
            forecast = _forecast_fitted(fit_category(train, config), horizon)
        except ValueError:
            continue
        naive = seasonal_naive(train.to_numpy(), horizon)
        model_scores.append(mase(actual, forecast, train.to_numpy()))
        naive_scores.append(mase(actual, naive, train.to_numpy()))
        origins.append(str(y.index[origin].date()))
    return {
        "mase": _nanmean(model_scores),
        "mase_seasonal_naive": _nanmean(naive_scores),
        "origins": origins,
    }


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


# -- training -----------------------------------------------------------------------------
def train_demand(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    horizon_days: int = 28,
    progress: Progress | None = None,
    config: DemandConfig | None = None,
    margin: float = 0.0,
    manifest_sha256: str | None = None,
    model_name: str = DEMAND_MODEL_NAME,
    n_threads: int | None = 1,
) -> TrainResult:
    """Fit, backtest, register and gate (on mean MASE, lower is better) the demand models,
    then write ``horizon_days`` of forecasts of the new version to ``mlops.demand_forecasts``
    (whether or not it is promoted: the rows carry model_name and model_version).

    ``n_threads`` bounds BLAS threads (``None``: library default); the optimiser's many tiny
    BLAS calls are slowest with spinning threads on a shared machine.
    """
    with threadpool_limits(limits=n_threads):
        return _train_demand(
            warehouse,
            registry,
            horizon_days=horizon_days,
            progress=progress,
            config=config or DemandConfig(),
            margin=margin,
            manifest_sha256=manifest_sha256,
            model_name=model_name,
        )


def _train_demand(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    horizon_days: int,
    progress: Progress | None,
    config: DemandConfig,
    margin: float,
    manifest_sha256: str | None,
    model_name: str,
) -> TrainResult:
    started = time.perf_counter()
    if horizon_days < 1:
        raise ValueError("horizon_days must be >= 1")
    report(progress, f"reading {DEMAND_DAILY_TABLE}")
    sql, data = read_table(warehouse, DEMAND_DAILY_TABLE, DEMAND_COLUMNS, what="demand training")
    if data.num_rows == 0:
        raise TrainingDataError(f"{DEMAND_DAILY_TABLE} has no rows")
    for column in DEMAND_COLUMNS:
        if data.column(column).null_count:
            raise TrainingDataError(
                f"{DEMAND_DAILY_TABLE}.{column} has {data.column(column).null_count} nulls"
            )
    series = daily_series(data)

    specs: dict[str, StatsmodelsSpec] = {}
    yearly: dict[str, list[float] | None] = {}
    per_category: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for category, y in series.items():
        if len(y) < config.min_days:
            skipped[category] = f"{len(y)} days of history, at least {config.min_days} needed"
            continue
        try:
            fitted = fit_category(y, config)
        except ValueError as exc:
            skipped[category] = str(exc)
            continue
        specs[category], yearly[category] = fitted.spec, fitted.yearly_coef
        per_category[category] = {
            "model": fitted.description,
            "days": len(y),
            **backtest(y, config, horizon_days),
        }
        report(progress, f"{category}: {per_category[category]}")
    if not specs:
        raise TrainingDataError(
            f"no category of {DEMAND_DAILY_TABLE} could be modelled: {skipped or 'no rows'}"
        )

    metrics: dict[str, Any] = {
        "mase": _nanmean([c["mase"] for c in per_category.values() if c["mase"] is not None]),
        "mase_seasonal_naive": _nanmean(
            [c["mase_seasonal_naive"] for c in per_category.values() if c["mase"] is not None]
        ),
        "per_category": per_category,
        "skipped": skipped,
        "holdout": {
            "sha256": table_sha256(data, ("category", "order_date")),
            "horizon_days": horizon_days,
            "backtest_origins": config.backtest_origins,
            "backtest_step_days": config.backtest_step_days,
        },
    }
    metrics["champion_evaluations"] = _evaluate_champion(
        registry, model_name, series, config, horizon_days, metrics
    )
    params = {"config": config.to_dict(), "horizon_days": horizon_days, "season": SEASON}
    fingerprint = {
        "table": DEMAND_DAILY_TABLE,
        "query": sql,
        "row_count": data.num_rows,
        "content_sha256": metrics["holdout"]["sha256"],
        "dbt_manifest_sha256": manifest_sha256,
        "last_date": max(str(s.index[-1].date()) for s in series.values()),
    }
    bundle = StatsmodelsBundle(specs, {"yearly_coef": yearly, "season": SEASON})
    report(progress, f"registering {model_name} (mean MASE {metrics['mase']})")
    version = registry.register(
        model_name, bundle, kind="statsmodels", params=params, metrics=metrics,
        fingerprint=fingerprint,
    )  # fmt: skip
    decision = registry.promote(
        model_name, version.version, metric=PROMOTION_METRIC, higher_is_better=False, margin=margin
    )
    report(progress, decision.reason)

    loaded = registry.load(model_name, version.version)  # forecast from the stored artifact
    written = write_forecasts(
        warehouse, forecast_frame(loaded.model, horizon_days), model_name, version.version
    )
    report(progress, f"wrote {written} forecast rows to {FORECASTS_TABLE}")
    return TrainResult(
        model_name=model_name,
        version=registry.get(model_name, version.version),
        promotion=decision,
        metrics=metrics,
        rows=data.num_rows,
        seconds=time.perf_counter() - started,
        notes=[f"skipped {c}: {why}" for c, why in skipped.items()],
    )


def _evaluate_champion(
    registry: ModelRegistry,
    model_name: str,
    series: Mapping[str, pd.Series],
    config: DemandConfig,
    horizon_days: int,
    metrics: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Production's specification backtested on this run's data and windows."""
    try:
        production = registry.get(model_name, "production")
    except ModelNotFoundError:
        return {}
    champion_config = DemandConfig.from_dict(production.params.get("config") or {})
    if champion_config == config:  # same specification, same data: the same (deterministic) run
        result = {k: metrics[k] for k in ("mase", "mase_seasonal_naive")}
    else:
        scores = [
            backtest(y, champion_config, horizon_days)["mase"]
            for y in series.values()
            if len(y) >= champion_config.min_days
        ]
        result = {"mase": _nanmean([s for s in scores if s is not None])}
    return {str(production.version): result}


def write_forecasts(
    warehouse: Warehouse, forecasts: pd.DataFrame, model_name: str, model_version: int
) -> int:
    """Replace the forecast rows of one model version in ``mlops.demand_forecasts``."""
    table = pa.Table.from_pandas(
        forecasts.assign(
            model_name=model_name, model_version=model_version, created_at=datetime.now(UTC)
        )[FORECAST_SCHEMA.names],
        schema=FORECAST_SCHEMA,
        preserve_index=False,
    )
    warehouse.create_table(FORECASTS_TABLE, FORECAST_SCHEMA)
    with warehouse.transaction():
        warehouse.execute(
            f"delete from {FORECASTS_TABLE} where model_name = ? and model_version = ?",
            [model_name, model_version],
        )
        return warehouse.append_arrow(FORECASTS_TABLE, table)
