"""Monitoring charts (PNG): a feature's reference vs current distribution (the drift bins of
:mod:`.drift`) and a realized metric per week and model version (:mod:`.performance`).

Drawn on a ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global state, no
display. Every function writes to a path the caller gives and returns it; file names from
:func:`write_charts` are deterministic (``drift_<feature>.png``, ``performance_<metric>.png``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .drift import DriftReference

Kind = Literal["numeric", "categorical"]
PERFORMANCE_METRICS: tuple[str, ...] = ("roc_auc", "brier", "calibration_gap")
NULL_LABEL = "null"
OTHER_LABEL = "(other)"
MAX_CATEGORIES = 25


# -- drawing helpers -----------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def chart_name(prefix: str, name: str) -> str:
    """``<prefix>_<name>.png`` with ``name`` reduced to ``[a-z0-9_]`` (a safe file name)."""
    slug = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "unnamed"
    return f"{prefix}_{slug}.png"


# -- distributions (pure) ------------------------------------------------------------------
def _edge(value: float) -> str:
    return f"{value:.4g}"


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the bins ``[null, x <= e0, e0 < x <= e1, ..., x > e_last]``."""
    if not edges:
        return [NULL_LABEL, "all values"]
    inner = [f"({_edge(a)}, {_edge(b)}]" for a, b in itertools.pairwise(edges)]
    return [NULL_LABEL, f"≤ {_edge(edges[0])}", *inner, f"> {_edge(edges[-1])}"]


def shares(counts: Sequence[float]) -> np.ndarray:
    """Counts as shares of their total (all zeros when the total is zero)."""
    values = np.asarray(counts, dtype=float)
    if (values < 0).any():
        raise ValueError("counts must be >= 0")
    total = values.sum()
    return values / total if total > 0 else np.zeros_like(values)


def numeric_bins(
    edges: Sequence[float], reference: Sequence[int], current: Sequence[int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, reference shares, current shares) of numeric drift bins; the null bin is
    dropped when neither side has nulls."""
    expected = len(edges) + 2
    if len(reference) != expected or len(current) != expected:
        raise ValueError(
            f"{len(edges)} edges need {expected} counts [null, bin 0..{len(edges)}], got "
            f"{len(reference)} reference and {len(current)} current"
        )
    labels, ref, cur = bin_labels(edges), shares(reference), shares(current)
    if reference[0] == 0 and current[0] == 0:
        return labels[1:], ref[1:], cur[1:]
    return labels, ref, cur


def category_shares(
    reference: Mapping[str, int],
    current: Mapping[str, int],
    *,
    max_categories: int = MAX_CATEGORIES,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, reference shares, current shares) over the union of categories, largest
    reference share first (new ones after, by current share); a category missing on one side
    counts 0 there and is labelled ``(new)`` or ``(gone)``. Beyond ``max_categories`` the
    smallest are summed into ``(other)``."""
    names = set(reference) | set(current)
    ref_share = dict(zip(reference, shares(list(reference.values())), strict=True))
    cur_share = dict(zip(current, shares(list(current.values())), strict=True))
    ordered = sorted(names, key=lambda c: (-ref_share.get(c, 0.0), -cur_share.get(c, 0.0), c))
    ref = np.array([ref_share.get(c, 0.0) for c in ordered])
    cur = np.array([cur_share.get(c, 0.0) for c in ordered])
    labels = [
        f"{c} (new)" if c not in reference else f"{c} (gone)" if c not in current else c
        for c in ordered
    ]
    if len(ordered) > max_categories:
        keep = max_categories - 1
        labels = [*labels[:keep], OTHER_LABEL]
        ref = np.r_[ref[:keep], ref[keep:].sum()]
        cur = np.r_[cur[:keep], cur[keep:].sum()]
    return labels, ref, cur


def distribution_chart(
    feature: str,
    kind: Kind,
    reference: Sequence[int] | Mapping[str, int],
    current: Sequence[int] | Mapping[str, int],
    path: Path,
    *,
    edges: Sequence[float] = (),
    title: str | None = None,
) -> Path:
    """Side-by-side bars of the reference and current share per bin (``numeric``: counts
    laid out ``[null, bin 0..len(edges)]`` over the reference's interior ``edges``) or per
    category (``categorical``: category -> count mappings). Writes ``path``, returns it."""
    if kind == "numeric":
        if isinstance(reference, Mapping) or isinstance(current, Mapping):
            raise TypeError("numeric distributions take count sequences, not mappings")
        labels, ref, cur = numeric_bins(edges, reference, current)
    elif kind == "categorical":
        if not isinstance(reference, Mapping) or not isinstance(current, Mapping):
            raise TypeError("categorical distributions take category -> count mappings")
        labels, ref, cur = category_shares(reference, current)
    else:
        raise ValueError(f"kind must be 'numeric' or 'categorical', not {kind!r}")
    totals = [int(sum(side.values() if isinstance(side, Mapping) else side))
              for side in (reference, current)]  # fmt: skip

    figure = _figure(max(6.0, 0.45 * len(labels) + 2.5), 4.5)
    ax = figure.add_subplot()
    x = np.arange(len(labels))
    width = 0.4
    ax.bar(x - width / 2, ref, width, label=f"reference (n={totals[0]})", color="tab:blue")
    ax.bar(x + width / 2, cur, width, label=f"current (n={totals[1]})", color="tab:orange")
    ax.set_xticks(
        x,
        labels,
        rotation=45 if len(labels) > 6 else 0,
        ha="right" if len(labels) > 6 else "center",
    )
    ax.set(ylabel="share of rows", title=title or f"{feature}: reference vs current")
    top = max(float(np.max(ref, initial=0.0)), float(np.max(cur, initial=0.0)), 0.01)
    ax.set_ylim(0, top * 1.25)  # headroom for the legend
    if totals[1] == 0:
        ax.text(0.5, 0.5, "no current rows", transform=ax.transAxes, ha="center")
    ax.legend(loc="upper center", ncols=2)
    return _save(figure, path)


# -- metric over time ----------------------------------------------------------------------
def _rows(rows: pa.Table | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return rows.to_pylist() if isinstance(rows, pa.Table) else [dict(r) for r in rows]


def metric_series(
    rows: pa.Table | Sequence[Mapping[str, Any]], metric: str
) -> dict[int, dict[str, Any]]:
    """Per model version: weeks, values, training value and degraded weeks of ``metric``
    from ``mlops.model_performance`` rows (the latest ``run_at`` of each week wins)."""
    latest: dict[tuple[int, date], dict[str, Any]] = {}
    for row in _rows(rows):
        if row.get("metric") != metric:
            continue
        key = (int(row["model_version"]), row["week_start"])
        seen = latest.get(key)
        if seen is None or _is_newer(row, seen):
            latest[key] = row
    series: dict[int, dict[str, Any]] = {}
    for (version, week), row in sorted(latest.items()):
        entry = series.setdefault(
            version, {"weeks": [], "values": [], "training_value": None, "degraded": []}
        )
        entry["weeks"].append(week)
        entry["values"].append(np.nan if row.get("value") is None else float(row["value"]))
        if row.get("training_value") is not None:
            entry["training_value"] = float(row["training_value"])
        if row.get("is_degraded"):
            entry["degraded"].append(len(entry["weeks"]) - 1)
    return series


def _is_newer(row: Mapping[str, Any], seen: Mapping[str, Any]) -> bool:
    """``row`` is from the same run as ``seen`` or a later one (no run_at: later row wins)."""
    new, old = row.get("run_at"), seen.get("run_at")
    return new is None or old is None or new >= old


def metric_over_time_chart(
    rows: pa.Table | Sequence[Mapping[str, Any]],
    metric: str,
    path: Path,
    *,
    title: str | None = None,
) -> Path:
    """``metric`` per week (x) for each model version (a line), the version's training value
    as a dashed line of the same colour over that version's weeks, and degraded weeks circled
    in red. ``rows``: those of ``mlops.model_performance`` (or
    :func:`.performance.performance_table`)."""
    series = metric_series(rows, metric)
    figure = _figure(8.0, 4.5)
    ax = figure.add_subplot()
    pad = np.timedelta64(3, "D")
    for i, (version, entry) in enumerate(sorted(series.items())):
        color = f"C{i % 10}"
        weeks = np.array(entry["weeks"], dtype="datetime64[D]")
        values = np.array(entry["values"], dtype=float)
        ax.plot(weeks, values, marker="o", color=color, label=f"v{version}")
        if entry["training_value"] is not None:
            ax.plot(
                [weeks.min() - pad, weeks.max() + pad], [entry["training_value"]] * 2,
                linestyle="--", linewidth=1, color=color, label=f"v{version} training",
            )  # fmt: skip
        if entry["degraded"]:
            bad = entry["degraded"]
            ax.scatter(
                weeks[bad], values[bad], s=140, facecolors="none", edgecolors="red",
                linewidths=1.5, zorder=3, label=f"v{version} degraded",
            )  # fmt: skip
    if series:
        ticks = week_ticks(sorted({w for e in series.values() for w in e["weeks"]}))
        ax.set_xticks(np.array(ticks, dtype="datetime64[D]"), [week_label(w) for w in ticks])
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {metric} values", transform=ax.transAxes, ha="center")
    ax.set(
        xlabel="ISO week of the scores' as_of_date", ylabel=metric,
        title=title or f"{metric} per week and model version (realized)",
    )  # fmt: skip
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(figure, path)


def week_ticks(weeks: Sequence[date], max_ticks: int = 12) -> list[date]:
    """At most ``max_ticks`` of the weeks, evenly spaced, the first always included."""
    step = max(1, -(-len(weeks) // max_ticks))
    return list(weeks[::step])


def week_label(week: date) -> str:
    """``2024-W10`` (the ISO week of a Monday)."""
    year, number, _ = week.isocalendar()
    return f"{year}-W{number:02d}"


# -- all at once ---------------------------------------------------------------------------
SCORE_CHART = "drift_score.png"


def write_charts(
    out_dir: Path,
    *,
    reference: DriftReference | None = None,
    current_numeric: Mapping[str, Sequence[int]] | None = None,
    current_categorical: Mapping[str, Mapping[str, int]] | None = None,
    current_scores: Sequence[int] | None = None,
    performance: pa.Table | Sequence[Mapping[str, Any]] | None = None,
    metrics: Sequence[str] = PERFORMANCE_METRICS,
) -> list[Path]:
    """Write ``drift_<feature>.png`` for every feature of ``reference`` against the current
    counts (e.g. ``CurrentCounts.numeric`` / ``.categorical`` of :func:`.drift.count_current`),
    ``drift_score.png`` when the reference has scores and ``current_scores`` (bin counts) are
    given, and ``performance_<metric>.png`` for each of ``metrics`` when ``performance`` rows
    are given. Returns the paths written, in that order."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    if reference is not None:
        current_numeric = current_numeric or {}
        current_categorical = current_categorical or {}
        jobs: list[tuple[str, Kind, Any, Any, Path, Sequence[float]]] = [
            (f, "numeric", r.counts, current_numeric.get(f), out_dir / chart_name("drift", f),
             r.edges)
            for f, r in reference.numeric.items()
        ]  # fmt: skip
        jobs += [
            (f, "categorical", c, current_categorical.get(f), out_dir / chart_name("drift", f), ())
            for f, c in reference.categorical.items()
        ]
        scores = getattr(reference, "scores", None)
        if scores is not None and current_scores is not None:
            jobs.append(
                ("model score", "numeric", scores.counts, current_scores, out_dir / SCORE_CHART,
                 scores.edges)
            )  # fmt: skip
        missing = [job[0] for job in jobs if job[3] is None]
        if missing:
            raise ValueError(f"no current counts for the reference features {missing}")
        if len({job[4] for job in jobs}) != len(jobs):
            raise ValueError(f"feature names collide as file names: {[j[4].name for j in jobs]}")
        for feature, kind, ref_counts, cur_counts, path, edges in jobs:
            paths.append(
                distribution_chart(feature, kind, ref_counts, cur_counts, path, edges=edges)
            )
    if performance is not None:
        rows = _rows(performance)
        for metric in metrics:
            paths.append(
                metric_over_time_chart(rows, metric, out_dir / chart_name("performance", metric))
            )
    return paths
