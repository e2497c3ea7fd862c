"""What people look at for each model version: PNG charts (bytes, stored next to the
artifact by the registry) and a markdown summary (the Prefect flow run's artifact).

Charts are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global
state, no display needed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

ROC = "roc.png"
PRECISION_RECALL = "precision_recall.png"
CALIBRATION = "calibration.png"
IMPORTANCE = "feature_importance.png"
FORECAST = "forecast_vs_actual.png"


def _figure(width: float = 6.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def roc_png(y: np.ndarray, score: np.ndarray, baseline: np.ndarray | None, *, title: str) -> bytes:
    """ROC curve of the model, and of the recency baseline when given."""
    figure = _figure()
    ax = figure.add_subplot()
    for label, values in (("model", score), ("recency baseline", baseline)):
        if values is None:
            continue
        fpr, tpr, _ = roc_curve(y, values)
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    return _png(figure)


def precision_recall_png(
    y: np.ndarray,
    score: np.ndarray,
    baseline: np.ndarray | None,
    *,
    threshold: float,
    title: str,
) -> bytes:
    """Precision-recall curve, the chosen threshold marked."""
    figure = _figure()
    ax = figure.add_subplot()
    for label, values in (("model", score), ("recency baseline", baseline)):
        if values is None:
            continue
        precision, recall, _ = precision_recall_curve(y, values)
        ax.plot(recall, precision, label=label)
    predicted = np.asarray(score) >= threshold
    if predicted.any():
        p = float((np.asarray(y)[predicted] == 1).mean())
        r = float(predicted[np.asarray(y) == 1].mean())
        ax.scatter([r], [p], color="black", zorder=3, label=f"threshold {threshold:.2f}")
    ax.axhline(float(np.mean(y)), linestyle=":", color="grey", label="base rate")
    ax.set(xlabel="recall", ylabel="precision", title=title, ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _png(figure)


def calibration_png(table: Sequence[Mapping[str, Any]], *, title: str) -> bytes:
    """Observed churn rate against mean predicted probability per bin."""
    figure = _figure()
    ax = figure.add_subplot()
    predicted = [row["mean_predicted"] for row in table]
    observed = [row["observed_rate"] for row in table]
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    ax.plot(predicted, observed, marker="o", label="model")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return _png(figure)


def importance_png(importance: Mapping[str, Mapping[str, float]], *, title: str) -> bytes:
    """Permutation importance (mean drop in the score, one standard deviation as error bar)."""
    names = sorted(importance, key=lambda f: importance[f]["mean"])
    figure = _figure(6.0, 0.35 * len(names) + 1.5)
    ax = figure.add_subplot()
    ax.barh(
        names,
        [importance[n]["mean"] for n in names],
        xerr=[importance[n]["std"] for n in names],
        color="tab:blue",
    )
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="drop in held-out ROC AUC when the feature is shuffled", title=title)
    return _png(figure)


def forecast_png(
    history: Mapping[str, pd.Series],
    backtest: pd.DataFrame,
    forecasts: pd.DataFrame,
    *,
    title: str,
    history_days: int = 120,
) -> bytes:
    """Per category: recent actuals, the last backtest origin's forecast and the forecast
    ahead, each with its 95% interval."""
    categories = sorted(history)
    columns = 2
    rows = max(1, -(-len(categories) // columns))
    figure = _figure(11.0, 2.6 * rows + 0.6)
    figure.suptitle(title)
    axes = figure.subplots(rows, columns, squeeze=False, sharex=False)
    for ax, category in zip(axes.flat, categories, strict=False):
        actual = history[category].iloc[-history_days:]
        ax.plot(actual.index, actual.to_numpy(), color="black", linewidth=0.8, label="actual")
        part = backtest[backtest["category"] == category]
        if not part.empty:
            last = part[part["origin_date"] == part["origin_date"].max()]
            dates = pd.to_datetime(last["forecast_date"])
            ax.plot(dates, last["units_forecast"], color="tab:orange", label="backtest")
            ax.fill_between(
                dates, last["lower_95"], last["upper_95"], color="tab:orange", alpha=0.2
            )
        ahead = forecasts[forecasts["category"] == category]
        if not ahead.empty:
            dates = pd.to_datetime(ahead["forecast_date"])
            ax.plot(dates, ahead["units_forecast"], color="tab:blue", label="forecast")
            ax.fill_between(
                dates, ahead["lower_95"], ahead["upper_95"], color="tab:blue", alpha=0.2
            )
        ax.set_title(category, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(categories) :]:
        ax.set_visible(False)
    if categories:
        axes.flat[0].legend(fontsize=7, loc="upper left")
    return _png(figure)


# -- markdown ------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def version_markdown(version: Any, *, promoted: bool | None = None) -> str:
    """A model version's headline metrics, promotion outcome and chart links (markdown)."""
    metrics = version.metrics or {}
    lines = [f"### {version.name} v{version.version} ({version.alias})", ""]
    if version.alias_reason:
        lines += [f"Promotion: {version.alias_reason}", ""]
    keys = [
        "roc_auc",
        "pr_auc",
        "precision",
        "recall",
        "f1",
        "threshold",
        "brier",
        "baseline_recency_roc_auc",
        "mase",
        "mase_seasonal_naive",
    ]
    rows = [f"| {k} | {_fmt(metrics[k])} |" for k in keys if k in metrics]
    fairness = metrics.get("fairness") or {}
    if fairness.get("largest_gap"):
        from .fairness import describe_gap

        rows.append(f"| fairness | {describe_gap(fairness['largest_gap'])} |")
    if rows:
        lines += ["| metric | value |", "|---|---|", *rows, ""]
    reports = getattr(version, "reports", None) or {}
    for name, entry in sorted(reports.items()):
        lines.append(f"- [{name}]({entry['uri']}) sha256 `{entry['sha256'][:12]}`")
    fingerprint = version.training_fingerprint or {}
    lines += [
        "",
        f"Training data: {fingerprint.get('row_count')} rows of {fingerprint.get('table')}, "
        f"content sha256 `{str(fingerprint.get('content_sha256'))[:12]}`, dbt manifest "
        f"`{str(fingerprint.get('dbt_manifest_sha256'))[:12]}`; code {version.code_version}.",
    ]
    return "\n".join(lines) + "\n"
