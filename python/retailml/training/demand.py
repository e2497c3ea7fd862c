"""Demand model: daily units per category, statsmodels ETS (additive errors, damped trend,
weekly seasonality) on the series divided by a multiplicative yearly profile.

Yearly seasonality of daily data is too long for an ETS seasonal state (365 initial values),
so once a category has ``yearly_min_days`` of history its yearly profile is estimated first
(:func:`yearly_index`: the centred 7-day mean over a linear trend, averaged per day of the
year, normalised to mean 1) and the ETS model is fitted on ``units / profile``; forecasts
and their 95% intervals are the ETS ones multiplied back by the profile. With less history
the profile is 1 (weekly seasonality only).

Quality: a rolling-origin backtest whose origins are spread over the last year
(``backtest_origins`` every ``backtest_step_days``), each refitting on the data before it,
scored by MASE (mean absolute error over the in-sample seasonal-naive lag-7 error of that
origin's training data) next to the seasonal-naive forecast's MASE, plus the 95% interval
coverage. Every backtest forecast is written to ``mlops.demand_backtest`` (so evaluation code
can compare them with the simulator's expected demand, and BI can plot them). The registered
artifact is JSON (:class:`StatsmodelsBundle`); forecasts are made from the reloaded artifact,
the same path any other consumer takes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from threadpoolctl import threadpool_limits

from ..features.spec import DEMAND_DAILY_TABLE
from ..registry import (
    ModelNotFoundError,
    ModelRegistry,
    StatsmodelsBundle,
    StatsmodelsSpec,
    record_training_batches,
    training_lineage,
)
from ..warehouse.base import Warehouse
from . import reports
from .common import Progress, TrainingDataError, TrainResult, read_table, report, table_sha256

DEMAND_MODEL_NAME = "demand"
PROMOTION_METRIC = "mase"
FORECASTS_TABLE = "mlops.demand_forecasts"
BACKTEST_TABLE = "mlops.demand_backtest"
SEASON = 7
YEAR_DAYS = 365.25
PROFILE_DAYS = 365
INDEX_BOUNDS = (0.2, 5.0)
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
BACKTEST_SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("origin_date", pa.date32()),  # first forecast day; the model saw the days before
        ("forecast_date", pa.date32()),
        ("horizon_day", pa.int64()),
        ("actual", pa.float64()),
        ("units_forecast", pa.float64()),
        ("lower_95", pa.float64()),
        ("upper_95", pa.float64()),
        ("seasonal_naive", pa.float64()),
        ("mase_scale", pa.float64()),  # in-sample seasonal-naive MAE of the training part
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
    ]
)


@dataclass(frozen=True)
class DemandConfig:
    """How each category's model is specified and backtested (stored as the version's params)."""

    damped_trend: bool = True
    yearly_min_days: int = PROFILE_DAYS
    min_days: int = 8 * SEASON
    backtest_origins: int = 13
    backtest_step_days: int = 4 * SEASON

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemandConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# -- series and seasonal terms (pure) -------------------------------------------------------
def daily_series(data: pa.Table) -> dict[str, pd.Series]:
    """Units per category as daily series (missing days zero-filled), sorted by date."""
    frame = data.to_pandas()
    series = {}
    for category, part in frame.groupby("category", sort=True):
        s = part.groupby(pd.to_datetime(part["order_date"]))["units"].sum().sort_index()
        index = pd.date_range(s.index.min(), s.index.max(), freq="D")
        series[str(category)] = s.reindex(index, fill_value=0.0).astype(float)
    return series


def day_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    """0-based day of the year on a 365-day calendar (29 February shares 28 February's)."""
    doy = index.day_of_year.to_numpy() - 1
    from_leap_day = index.is_leap_year & (doy >= 59)  # 29 February onwards
    return np.where(from_leap_day, doy - 1, doy)


def yearly_index(y: pd.Series) -> list[float] | None:
    """The multiplicative yearly profile of ``y`` (365 values, mean 1), or ``None`` when
    ``y`` is shorter than a year or too sparse to divide by."""
    if len(y) < PROFILE_DAYS:
        return None
    values = y.to_numpy(dtype=float)
    t = np.arange(len(values), dtype=float)
    trend = np.polyval(np.polyfit(t, values, 1), t)
    if np.any(trend <= 0.5):  # near-zero level: ratios are noise
        return None
    weekly_mean = pd.Series(values).rolling(SEASON, center=True, min_periods=4).mean()
    ratio = weekly_mean.to_numpy() / trend
    profile = (
        pd.Series(ratio)
        .groupby(day_of_year(y.index))
        .mean()
        .reindex(range(PROFILE_DAYS))
        .interpolate(limit_direction="both")
        .to_numpy()
    )
    profile = np.clip(profile / np.mean(profile), *INDEX_BOUNDS)
    return [float(v) for v in profile / np.mean(profile)]


def yearly_factor(index: pd.DatetimeIndex, profile: list[float] | None) -> np.ndarray:
    """The profile's multiplier on each date (1 without a profile)."""
    if not profile:
        return np.ones(len(index))
    return np.asarray(profile)[day_of_year(index)]


def fourier_terms(index: pd.DatetimeIndex, terms: int, period: float = YEAR_DAYS) -> np.ndarray:
    """``2 * terms`` yearly sine/cosine columns on the absolute day number (any date range).

    Versions registered before the yearly profile stored Fourier coefficients
    (``extra['yearly_coef']``, an additive term); their forecasts still use this.
    """
    day = (index.values.astype("datetime64[D]").astype(np.int64)).astype(float)
    columns = []
    for k in range(1, terms + 1):
        columns += [np.sin(2 * np.pi * k * day / period), np.cos(2 * np.pi * k * day / period)]
    return np.column_stack(columns) if columns else np.empty((len(index), 0))


def yearly_component(index: pd.DatetimeIndex, coef: list[float] | None) -> np.ndarray:
    """The additive Fourier term of a version registered with ``yearly_coef``."""
    if not coef:
        return np.zeros(len(index))
    return fourier_terms(index, len(coef) // 2) @ np.asarray(coef)


def seasonal_naive(train: np.ndarray, horizon: int, period: int = SEASON) -> np.ndarray:
    """Repeat the last ``period`` observations."""
    last = np.asarray(train, dtype=float)[-period:]
    return np.array([last[i % period] for i in range(horizon)])


def mase_scale(train: np.ndarray, period: int = SEASON) -> float:
    """In-sample mean absolute error of the seasonal-naive forecast (NaN if undefined)."""
    train = np.asarray(train, dtype=float)
    if train.size <= period:
        return float("nan")
    scale = float(np.mean(np.abs(train[period:] - train[:-period])))
    return scale if np.isfinite(scale) and scale > 0 else float("nan")


def mase(
    actual: np.ndarray, forecast: np.ndarray, train: np.ndarray, period: int = SEASON
) -> float:
    """Mean absolute error scaled by the in-sample seasonal-naive error (NaN if that is 0)."""
    scale = mase_scale(train, period)
    if not np.isfinite(scale):
        return float("nan")
    return float(np.mean(np.abs(np.asarray(actual) - np.asarray(forecast))) / scale)


# -- fitting -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CategoryModel:
    spec: StatsmodelsSpec
    yearly_index: list[float] | None
    description: str


def fit_category(y: pd.Series, config: DemandConfig) -> CategoryModel:
    """Fit one category: the yearly profile (if long enough), then ETS on what remains."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    profile = yearly_index(y) if len(y) >= config.yearly_min_days else None
    residual = y.astype(float) / yearly_factor(y.index, profile)
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
            " x yearly profile" if profile else ""
        )
        return CategoryModel(
            StatsmodelsSpec.from_results(results, init_kwargs), profile, description
        )
    raise ValueError(f"no ETS specification could be fitted: {last_error}")


def forecast_frame(
    bundle: StatsmodelsBundle, horizon_days: int, *, categories: list[str] | None = None
) -> pd.DataFrame:
    """Forecasts of a (reloaded) demand bundle: category, forecast_date, horizon_day,
    units_forecast, lower_95, upper_95 (clipped at 0)."""
    frames = []
    extra = bundle.extra or {}
    profiles = extra.get("yearly_index", {})
    coefs = extra.get("yearly_coef", {})
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
        factor = yearly_factor(dates, profiles.get(category))
        shift = yearly_component(dates, coefs.get(category))
        frames.append(
            pd.DataFrame(
                {
                    "category": category,
                    "forecast_date": dates.date,
                    "horizon_day": np.arange(1, horizon_days + 1),
                    "units_forecast": np.maximum(summary["mean"].to_numpy() * factor + shift, 0),
                    "lower_95": np.maximum(lower.to_numpy() * factor + shift, 0.0),
                    "upper_95": np.maximum(upper.to_numpy() * factor + shift, 0.0),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _forecast_fitted(model: CategoryModel, horizon: int) -> pd.DataFrame:
    bundle = StatsmodelsBundle({"c": model.spec}, {"yearly_index": {"c": model.yearly_index}})
    return forecast_frame(bundle, horizon)


def backtest(
    y: pd.Series, config: DemandConfig, horizon: int, *, category: str = ""
) -> pd.DataFrame:
    """Rolling-origin backtest: at each origin (the latest possible, then every
    ``backtest_step_days`` earlier) refit on the data before it and forecast ``horizon``
    days. One row per (origin, horizon day) with the actual, the forecast and its interval,
    the seasonal-naive forecast and the origin's MASE scale."""
    frames = []
    for k in range(config.backtest_origins):
        origin = len(y) - horizon - k * config.backtest_step_days
        if origin < config.min_days:
            break
        train = y.iloc[:origin]
        scale = mase_scale(train.to_numpy())
        if not np.isfinite(scale):
            continue
        try:
            forecast = _forecast_fitted(fit_category(train, config), horizon)
        except ValueError:
            continue
        frames.append(
            pd.DataFrame(
                {
                    "category": category,
                    "origin_date": y.index[origin].date(),
                    "forecast_date": y.index[origin : origin + horizon].date,
                    "horizon_day": np.arange(1, horizon + 1),
                    "actual": y.iloc[origin : origin + horizon].to_numpy(),
                    "units_forecast": forecast["units_forecast"].to_numpy(),
                    "lower_95": forecast["lower_95"].to_numpy(),
                    "upper_95": forecast["upper_95"].to_numpy(),
                    "seasonal_naive": seasonal_naive(train.to_numpy(), horizon),
                    "mase_scale": scale,
                }
            )
        )
    columns = [f.name for f in BACKTEST_SCHEMA][:10]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def backtest_scores(frame: pd.DataFrame) -> dict[str, Any]:
    """MASE of the model and of seasonal naive (mean over origins and categories), the
    interval coverage and the origins of a backtest frame."""
    if frame.empty:
        return {"mase": None, "mase_seasonal_naive": None, "interval_coverage_95": None}
    keys = ["category", "origin_date"]
    error = frame.assign(
        model=(frame["actual"] - frame["units_forecast"]).abs() / frame["mase_scale"],
        naive=(frame["actual"] - frame["seasonal_naive"]).abs() / frame["mase_scale"],
        covered=(frame["actual"] >= frame["lower_95"]) & (frame["actual"] <= frame["upper_95"]),
    )
    per_origin = error.groupby(keys)[["model", "naive"]].mean()
    return {
        "mase": float(per_origin["model"].mean()),
        "mase_seasonal_naive": float(per_origin["naive"].mean()),
        "interval_coverage_95": float(error["covered"].mean()),
        "origins": sorted({str(d) for d in frame["origin_date"]}),
    }


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
    dbt_manifest: Path | None = None,
    model_name: str = DEMAND_MODEL_NAME,
    n_threads: int | None = 1,
    with_reports: bool = True,
) -> TrainResult:
    """Fit, backtest, register and gate (on mean MASE, lower is better) the demand models,
    then write ``horizon_days`` of forecasts of the new version to ``mlops.demand_forecasts``
    (whether or not it is promoted: the rows carry model_name and model_version) and its
    backtest to ``mlops.demand_backtest``.

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
            dbt_manifest=dbt_manifest,
            model_name=model_name,
            with_reports=with_reports,
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
    dbt_manifest: Path | None,
    model_name: str,
    with_reports: bool,
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
    profiles: dict[str, list[float] | None] = {}
    per_category: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    backtests: list[pd.DataFrame] = []
    for category, y in series.items():
        if len(y) < config.min_days:
            skipped[category] = f"{len(y)} days of history, at least {config.min_days} needed"
            continue
        try:
            fitted = fit_category(y, config)
        except ValueError as exc:
            skipped[category] = str(exc)
            continue
        specs[category], profiles[category] = fitted.spec, fitted.yearly_index
        frame = backtest(y, config, horizon_days, category=category)
        backtests.append(frame)
        scores = backtest_scores(frame)
        per_category[category] = {"model": fitted.description, "days": len(y), **scores}
        report(
            progress,
            f"{category}: {fitted.description}, backtest MASE {scores['mase']} "
            f"(seasonal naive {scores['mase_seasonal_naive']}) over "
            f"{len(scores.get('origins', []))} origins",
        )
    if not specs:
        raise TrainingDataError(
            f"no category of {DEMAND_DAILY_TABLE} could be modelled: {skipped or 'no rows'}"
        )
    backtest_frame = pd.concat(backtests, ignore_index=True)
    overall = backtest_scores(backtest_frame)

    metrics: dict[str, Any] = {
        "mase": overall["mase"],
        "mase_seasonal_naive": overall["mase_seasonal_naive"],
        "interval_coverage_95": overall["interval_coverage_95"],
        "backtest": {
            "table": BACKTEST_TABLE,
            "origins": overall.get("origins", []),
            "horizon_days": horizon_days,
            "step_days": config.backtest_step_days,
            "forecasts": len(backtest_frame),
            "mase_definition": "mean over (category, origin) of MAE / in-sample seasonal-naive "
            f"(lag {SEASON}) MAE of the origin's training data",
        },
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
    lineage, batches = training_lineage(warehouse, DEMAND_DAILY_TABLE, dbt_manifest)
    fingerprint = {
        "table": DEMAND_DAILY_TABLE,
        "query": sql,
        "row_count": data.num_rows,
        "content_sha256": metrics["holdout"]["sha256"],
        **lineage,
        "dbt_manifest_sha256": lineage["dbt_manifest_sha256"] or manifest_sha256,
        "last_date": max(str(s.index[-1].date()) for s in series.values()),
    }
    bundle = StatsmodelsBundle(specs, {"yearly_index": profiles, "season": SEASON})
    forecasts = forecast_frame(bundle, horizon_days)
    charts = {}
    if with_reports:
        charts[reports.FORECAST] = reports.forecast_png(
            {c: series[c] for c in specs},
            backtest_frame,
            forecasts,
            title=f"{model_name}: backtest MASE {metrics['mase']:.3f} "
            f"(seasonal naive {metrics['mase_seasonal_naive']:.3f})",
        )
    report(progress, f"registering {model_name} (mean MASE {metrics['mase']})")
    version = registry.register(
        model_name, bundle, kind="statsmodels", params=params, metrics=metrics,
        fingerprint=fingerprint, reports=charts,
    )  # fmt: skip
    record_training_batches(warehouse, model_name, version.version, batches)
    write_backtest(warehouse, backtest_frame, model_name, version.version)
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
    """Production's specification (as this code fits it) backtested on this run's data and
    on this run's backtest origins, so both MASEs come from the same windows."""
    try:
        production = registry.get(model_name, "production")
    except ModelNotFoundError:
        return {}
    champion_config = replace(
        DemandConfig.from_dict(production.params.get("config") or {}),
        backtest_origins=config.backtest_origins,
        backtest_step_days=config.backtest_step_days,
    )
    if champion_config == config:  # same specification, same data: the same (deterministic) run
        result = {k: metrics[k] for k in ("mase", "mase_seasonal_naive")}
    else:
        frames = [
            backtest(y, champion_config, horizon_days, category=c)
            for c, y in series.items()
            if len(y) >= champion_config.min_days
        ]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        result = {"mase": backtest_scores(frame)["mase"] if not frame.empty else None}
    return {str(production.version): result}


def _replace_version_rows(
    warehouse: Warehouse, table: str, schema: pa.Schema, data: pa.Table, name: str, version: int
) -> int:
    warehouse.create_table(table, schema)
    with warehouse.transaction():
        warehouse.execute(
            f"delete from {table} where model_name = ? and model_version = ?", [name, version]
        )
        return warehouse.append_arrow(table, data)


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
    return _replace_version_rows(
        warehouse, FORECASTS_TABLE, FORECAST_SCHEMA, table, model_name, model_version
    )


def write_backtest(
    warehouse: Warehouse, frame: pd.DataFrame, model_name: str, model_version: int
) -> int:
    """Replace the backtest rows of one model version in ``mlops.demand_backtest``."""
    table = pa.Table.from_pandas(
        frame.assign(model_name=model_name, model_version=model_version)[BACKTEST_SCHEMA.names],
        schema=BACKTEST_SCHEMA,
        preserve_index=False,
    )
    return _replace_version_rows(
        warehouse, BACKTEST_TABLE, BACKTEST_SCHEMA, table, model_name, model_version
    )
