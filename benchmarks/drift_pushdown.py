"""Feature drift of a 10-million-row window: counting in the warehouse (pushdown) against
pulling the rows to Python and counting in numpy, on PostgreSQL and on DuckDB, in one run.

    .venv/bin/python benchmarks/drift_pushdown.py                  # 10M current rows
    .venv/bin/python benchmarks/drift_pushdown.py --rows 200000    # a quick look

What it does:

1. generates, with numpy, a reference sample (``--reference-rows``, in memory) and a current
   window (``--rows``) of the model's 13 features: the 9 numeric and 3 categorical ones of
   :mod:`retailml.features.spec` plus ``score`` (a probability). Counts are Poisson/gamma
   mixtures, amounts log-normal, rates beta, categories with skewed shares, a few nulls
   (and ``avg_order_value_365d``/``return_rate_365d`` null without orders); the current
   window is slightly shifted and has a country the reference never saw;
2. builds the drift reference from the sample with
   :func:`retailml.monitoring.drift.build_reference` (``--bins`` quantile bins) and stores
   it in ``mlops.drift_reference`` of both warehouses, as training does; the check reads it
   back from there, as the monitor does;
3. loads the current window into ``bench.drift_current`` in a scratch PostgreSQL database
   (unique name, dropped at the end unless ``--keep``) and in a scratch DuckDB file, in
   chunks of ``--chunk-rows`` through ``warehouse.append_arrow`` (each chunk generated once,
   appended to both); PostgreSQL then gets ``vacuum analyze`` (hint bits and visibility map
   set, so the first timed scan does not write the table), DuckDB a ``checkpoint``. This runs
   in a child process, timed apart: the loader's memory (chunks, COPY buffers, DuckDB's
   write path) is not the drift check's, and the check opens the warehouses cold, as the
   scheduled check does;
4. per warehouse, timed: *pushdown* is the module's public functions,
   :func:`~retailml.monitoring.drift.count_current` (SQL run by the warehouse) then
   :func:`~retailml.monitoring.drift.compare`; *pull* streams the 13 columns through
   ``warehouse.iter_arrow`` in batches of ``--batch-rows`` (for PostgreSQL the binary-COPY
   Arrow path of :mod:`retailml.warehouse.pg_read`, the fastest read we have:
   ``benchmarks/read.py``), bins each batch on the reference's edges
   (:func:`~retailml.monitoring.drift.bin_index`, ``np.bincount``), counts categories with
   ``pyarrow.compute.value_counts``, adds it all up (a few batches in memory at a time),
   builds the same
   :class:`~retailml.monitoring.drift.CurrentCounts` and calls the same ``compare``. On
   PostgreSQL the pushdown runs three times: with the server's settings (what the module
   does; the last line's ``pg_pushdown_s``), with ``SET work_mem`` to ``--pg-work-mem``,
   and with ``SET jit = off``;
5. checks that every path on both warehouses produced identical counts and the same
   statistics: the benchmark's correctness check; a difference stops it, naming the
   features and values that differ.

The methods take turns, ``--repeat`` rounds, best of each (load spikes on the shared machine
hit all alike). Peak RSS is this (the drift check's) process's, per phase and over the whole
run (imports, reference, both warehouses' pushdown and pull; DuckDB is embedded, so its
buffer pool counts: ``--duckdb-memory-limit``, 32MB by default, as a deployment sets
``RETAILML_DUCKDB_MEMORY_LIMIT``); the loader child's is printed with the load. The last
line is key=value
pairs: rows= pg_pushdown_s= pg_pull_s= pg_pushdown_over_pull= duckdb_pushdown_s=
duckdb_pull_s= duckdb_pushdown_over_pull= peak_rss_mb=
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from retailml.config import load_settings
from retailml.features.spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from retailml.monitoring.drift import (
    NULL_CATEGORY,
    CurrentCounts,
    DriftReference,
    FeatureDrift,
    bin_index,
    build_reference,
    compare,
    count_current,
    read_drift_reference,
    write_drift_reference,
)
from retailml.warehouse.base import Warehouse, quote_ident
from retailml.warehouse.duckdb import DuckDBWarehouse
from retailml.warehouse.postgres import PostgresWarehouse, conninfo

TABLE = "bench.drift_current"
MODEL_NAME, MODEL_VERSION = "bench", 1  # whose reference mlops.drift_reference holds
NUMERIC = (*NUMERIC_FEATURES, "score")  # the model's 9 numeric + 1; with 3 categorical: 13
CATEGORICAL = CATEGORICAL_FEATURES
INTEGER = {
    "recency_days",
    "frequency_90d",
    "frequency_365d",
    "tenure_days",
    "distinct_categories_365d",
}
SCHEMA = pa.schema(
    [pa.field(name, pa.int64() if name in INTEGER else pa.float64()) for name in NUMERIC]
    + [pa.field(name, pa.string()) for name in CATEGORICAL]
)
# category -> share, reference and current window ("PL" is new in the current one)
CATEGORY_SHARES = {
    "country": (
        {"NL": 0.46, "DE": 0.24, "BE": 0.15, "FR": 0.10, "LU": 0.05},
        {"NL": 0.43, "DE": 0.25, "BE": 0.15, "FR": 0.11, "LU": 0.04, "PL": 0.02},
    ),
    "loyalty_tier": (
        {"bronze": 0.62, "silver": 0.28, "gold": 0.10},
        {"bronze": 0.58, "silver": 0.30, "gold": 0.12},
    ),
    "signup_channel": (
        {"web": 0.52, "app": 0.33, "marketplace": 0.15},
        {"web": 0.47, "app": 0.38, "marketplace": 0.15},
    ),
}
NULL_SHARE = {"recency_days": 0.003, "score": 0.002, "signup_channel": 0.01}

Result = tuple[CurrentCounts, list[FeatureDrift]]  # a path's counts and statistics


def say(message: str) -> None:
    print(message, flush=True)


class PeakRss:
    """This process's peak RSS per phase and over the whole run (the largest phase peak).

    Linux keeps the peak in ``VmHWM``; writing ``5`` to ``/proc/self/clear_refs`` resets it,
    so each phase gets its own peak. Where that is not allowed, phases report the peak so
    far (``ru_maxrss``), which still makes the whole run's right."""

    def __init__(self) -> None:
        self.overall = self.read()  # interpreter and imports

    @staticmethod
    def read() -> float:
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def start(self) -> None:
        self.overall = max(self.overall, self.read())
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
        except OSError:
            pass

    def stop(self) -> float:
        peak = self.read()
        self.overall = max(self.overall, peak)
        return peak


# -- data ----------------------------------------------------------------------------------
def generate(rng: np.random.Generator, n: int, *, current: bool) -> pa.Table:
    """``n`` rows of the 13 features; ``current`` shifts every distribution a little."""
    shift = 1.0 if current else 0.0
    tenure = rng.gamma(2.0, 300.0 - 25.0 * shift, n).astype(np.int64)
    intensity = rng.gamma(1.5, 4.0 - 0.4 * shift, n)  # orders per year (negative binomial)
    frequency_365d = rng.poisson(intensity)
    frequency_90d = rng.binomial(frequency_365d, 0.25 + 0.02 * shift)
    has_orders = frequency_365d > 0
    aov = rng.lognormal(np.log(45.0) + 0.05 * shift, 0.6, n)
    monetary_365d = np.where(has_orders, frequency_365d * aov * rng.lognormal(0, 0.15, n), 0.0)
    monetary_90d = np.where(frequency_90d > 0, frequency_90d * aov * rng.lognormal(0, 0.2, n), 0)
    return_rate = rng.beta(1.0 + 0.2 * shift, 12.0, n)
    gap = rng.gamma(1.0, 365.0 / (frequency_365d + 1.0))
    recency = np.where(has_orders, np.minimum(gap, 364), 365 + rng.gamma(1.5, 120.0, n))
    distinct = np.where(has_orders, np.minimum(frequency_365d, 1 + rng.poisson(1.8, n)), 0)
    score = rng.beta(2.0 + 0.3 * shift, 5.0, n)
    numeric = {
        "recency_days": (recency.astype(np.int64), NULL_SHARE["recency_days"]),
        "frequency_90d": (frequency_90d, None),
        "monetary_90d": (np.round(monetary_90d, 2), None),
        "frequency_365d": (frequency_365d, None),
        "monetary_365d": (np.round(monetary_365d, 2), None),
        "avg_order_value_365d": (
            np.round(monetary_365d / np.maximum(frequency_365d, 1), 2),
            "no orders",
        ),
        "return_rate_365d": (return_rate, "no orders"),
        "tenure_days": (tenure, None),
        "distinct_categories_365d": (distinct, None),
        "score": (score, NULL_SHARE["score"]),
    }
    columns = {}
    for name, (values, null_share) in numeric.items():
        if null_share is None:
            mask = None
        elif null_share == "no orders":  # undefined without an order in the year
            mask = ~has_orders
        else:
            mask = rng.random(n) < null_share
        columns[name] = pa.array(values, SCHEMA.field(name).type, mask=mask)
    for name, shares in CATEGORY_SHARES.items():
        share = shares[1 if current else 0]
        labels = pa.array(list(share), pa.string())
        weights = np.array(list(share.values()))
        codes = rng.choice(len(share), size=n, p=weights / weights.sum())
        mask = rng.random(n) < NULL_SHARE[name] if name in NULL_SHARE else None
        columns[name] = labels.take(pa.array(codes, pa.int32(), mask=mask))
    return pa.table(columns, schema=SCHEMA)


def load(args: argparse.Namespace) -> dict[str, Any]:
    """What training and the daily loads leave behind: the model's drift reference, built
    from a sample (``--reference-rows``) and stored in ``mlops.drift_reference`` of both
    warehouses as training stores it; and the current window, generated chunk by chunk and
    appended to both, then ``vacuum analyze`` (PostgreSQL) and ``checkpoint`` (DuckDB).
    Returns the seconds of each step and this process's peak RSS."""
    pg_dsn, duck_path, rows, chunk_rows, seed = (
        args.dsn, args.duckdb_path, args.rows, args.chunk_rows, args.seed
    )  # fmt: skip
    seconds = dict.fromkeys(["generate", "pg", "duckdb"], 0.0)
    warehouses: dict[str, Warehouse] = {
        "pg": PostgresWarehouse(pg_dsn),
        "duckdb": DuckDBWarehouse(duck_path),
    }
    try:
        started = time.perf_counter()
        sample = generate(np.random.default_rng([seed, 0]), args.reference_rows, current=False)
        reference = build_reference(
            sample, numeric=NUMERIC, categorical=CATEGORICAL, n_bins=args.bins
        )
        for wh in warehouses.values():
            write_drift_reference(wh, MODEL_NAME, MODEL_VERSION, reference)
        seconds["reference"] = time.perf_counter() - started
        del sample
        for wh in warehouses.values():
            wh.execute(f"drop table if exists {TABLE}")
            wh.create_table(TABLE, SCHEMA)
        for index, start in enumerate(range(0, rows, chunk_rows)):
            started = time.perf_counter()
            rng = np.random.default_rng([seed, 1, index])
            chunk = generate(rng, min(chunk_rows, rows - start), current=True)
            seconds["generate"] += time.perf_counter() - started
            for name, wh in warehouses.items():
                started = time.perf_counter()
                written = wh.append_arrow(TABLE, chunk)
                seconds[name] += time.perf_counter() - started
                if written != chunk.num_rows:
                    raise AssertionError(f"{name} wrote {written} rows of {chunk.num_rows}")
            del chunk
        started = time.perf_counter()
        warehouses["pg"].execute(f"vacuum analyze {TABLE}")
        seconds["pg_vacuum"] = time.perf_counter() - started
        started = time.perf_counter()
        warehouses["duckdb"].execute("checkpoint")
        seconds["duckdb_checkpoint"] = time.perf_counter() - started
        pg_bytes = warehouses["pg"].scalar(f"select pg_total_relation_size('{TABLE}')")
    finally:
        for wh in warehouses.values():
            wh.close()
    return {
        **seconds,
        "pg_mb": int(pg_bytes) / 2**20,
        "duckdb_mb": duck_path.stat().st_size / 2**20,
        "peak_rss_mb": PeakRss.read(),
    }


def load_in_child(argv: list[str], pg_dsn: str, duck_path: Path) -> dict[str, Any]:
    """:func:`load` in a child process, so that its memory (generated chunks, COPY buffers,
    DuckDB's write path) is not the drift check's."""
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--phase", "load", "--dsn", pg_dsn,
         "--duckdb-path", str(duck_path)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"loading failed (exit {out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the two paths -------------------------------------------------------------------------
def pushdown(warehouse: Warehouse, reference: DriftReference) -> Result:
    """Counts computed by the warehouse (the module's own SQL), then the statistics."""
    current = count_current(warehouse, TABLE, reference)
    return current, compare(reference, current)


def pull(warehouse: Warehouse, reference: DriftReference, batch_rows: int) -> Result:
    """The rows streamed to Python in Arrow batches, counted per batch in numpy (counts per
    reference bin) and Arrow (``value_counts``), then the same statistics."""
    numeric = {f: np.zeros(len(ref.edges) + 2, np.int64) for f, ref in reference.numeric.items()}
    categorical: dict[str, Counter[str]] = {f: Counter() for f in reference.categorical}
    rows = 0
    columns = ", ".join(quote_ident(c) for c in (*reference.numeric, *reference.categorical))
    for batch in warehouse.iter_arrow(f"select {columns} from {TABLE}", batch_rows=batch_rows):
        rows += batch.num_rows
        for feature, ref in reference.numeric.items():
            # float64 with NaN for nulls, as build_reference reads the reference
            values = batch.column(feature).cast(pa.float64()).to_numpy(zero_copy_only=False)
            bins = bin_index(values, ref.edges) + 1  # the null bin first
            size = len(ref.edges) + 2
            numeric[feature] += np.bincount(bins, minlength=size)
        for feature, counts in categorical.items():
            column = pc.fill_null(batch.column(feature).cast(pa.string()), NULL_CATEGORY)
            found = pc.value_counts(column)
            values, numbers = found.field("values").to_pylist(), found.field("counts").to_pylist()
            counts.update(dict(zip(values, numbers, strict=True)))
    current = CurrentCounts(
        rows,
        {f: tuple(int(c) for c in counts) for f, counts in numeric.items()},
        {f: dict(counts) for f, counts in categorical.items()},
    )
    return current, compare(reference, current)


def differences(a: CurrentCounts, b: CurrentCounts) -> list[str]:
    """What differs between two count results, one line per feature (counts are exact)."""
    lines = [f"  rows: {a.rows} != {b.rows}"] if a.rows != b.rows else []
    for kind, left, right in (("counts", a.numeric, b.numeric), ("categories", a.categorical,
                              b.categorical)):  # fmt: skip
        for feature in sorted(set(left) | set(right)):
            if left.get(feature) != right.get(feature):
                lines.append(f"  {kind} {feature}: {left.get(feature)} != {right.get(feature)}")
    return lines


def statistic_differences(
    a: Sequence[FeatureDrift], b: Sequence[FeatureDrift], rel: float = 1e-6
) -> list[str]:
    """Features whose statistics or verdicts differ (beyond floating-point rounding)."""
    lines = []
    for x, y in zip(a, b, strict=True):
        same = x.feature == y.feature and x.is_drifted == y.is_drifted
        same = same and x.statistic == y.statistic
        same = same and math.isclose(x.value, y.value, rel_tol=rel, abs_tol=1e-12)
        if not same:
            lines.append(f"  {x.feature}: {x} != {y}")
    return lines


def check_same(
    label_a: str,
    a: Result,
    label_b: str,
    b: Result,
) -> None:
    """Stop the benchmark if two paths disagree: the counts first, then the statistics."""
    lines = differences(a[0], b[0]) or statistic_differences(a[1], b[1])
    if lines:
        message = f"{label_a} and {label_b} disagree:\n" + "\n".join(lines)
        say(f"ERROR: {message}")
        raise AssertionError(message)


@contextmanager
def pg_session(warehouse: Warehouse, setting: str | None) -> Iterator[None]:
    """Run with one PostgreSQL setting changed for the session (``"work_mem = '256MB'"``),
    then back to the server's; ``None``: the server's settings, as the module runs."""
    if setting is None:
        yield
        return
    name = setting.split("=")[0].strip()
    warehouse.execute(f"set {setting}")
    try:
        yield
    finally:
        warehouse.execute(f"reset {name}")


# -- the benchmark -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the current window")
    parser.add_argument("--reference-rows", type=int, default=200_000)
    parser.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature")
    parser.add_argument("--chunk-rows", type=int, default=200_000, help="rows per loaded chunk")
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=20_000,
        help="iter_arrow batch (pull; 50k-100k: as fast, more memory)",
    )
    parser.add_argument("--pg-work-mem", default="256MB", help="work_mem of a second pushdown")
    parser.add_argument(
        "--duckdb-memory-limit",
        default="32MB",
        help="the embedded warehouse's buffer pool (RETAILML_DUCKDB_MEMORY_LIMIT), which lives "
        "in this process; 'none': DuckDB's default, 80%% of RAM",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds; best of each is reported")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pg-host", default=None, help="default: RETAILML_PG_HOST or 127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=None, help="default: RETAILML_PG_PORT")
    parser.add_argument("--pg-user", default=None, help="default: RETAILML_PG_USER or postgres")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="for the DuckDB file; default: a temporary one"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch database and DuckDB file"
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--duckdb-path", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if str(args.duckdb_memory_limit).lower() == "none":
        args.duckdb_memory_limit = None
    if args.phase == "load":
        print(json.dumps(load(args)))
        return
    rss = PeakRss()

    overrides = {
        f"pg_{key}": value
        for key in ("host", "port", "user")
        if (value := getattr(args, f"pg_{key}")) is not None
    }
    settings = load_settings(warehouse="postgres", **overrides)
    database = f"retailml_bench_drift_{uuid.uuid4().hex[:8]}"
    admin = conninfo(settings, "postgres")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="retailml-bench-drift-"))
    workdir.mkdir(parents=True, exist_ok=True)
    duck_path = workdir / "drift.duckdb"
    say(
        f"PostgreSQL database {database} on {settings.pg_host}:{settings.pg_port}, "
        f"DuckDB file {duck_path}; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; RSS after imports {rss.overall:.0f} MB"
    )

    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'create database "{database}"')
    warehouses: dict[str, Warehouse] = {}
    try:
        dsn = conninfo(settings, database)
        loaded = load_in_child(argv, dsn, duck_path)
        say(
            f"reference of model {MODEL_NAME} v{MODEL_VERSION} from {args.reference_rows:,} "
            f"rows ({args.bins} bins) built and stored in {loaded['reference']:.1f} s; "
            f"loaded {args.rows:,} rows x {len(SCHEMA)} features in chunks of "
            f"{args.chunk_rows:,} (a child process, peak RSS {loaded['peak_rss_mb']:.0f} MB): "
            f"generated in {loaded['generate']:.1f} s; PostgreSQL COPY {loaded['pg']:.1f} s + "
            f"vacuum analyze {loaded['pg_vacuum']:.1f} s ({loaded['pg_mb']:,.0f} MB); DuckDB "
            f"append {loaded['duckdb']:.1f} s + checkpoint {loaded['duckdb_checkpoint']:.1f} s "
            f"({loaded['duckdb_mb']:,.0f} MB file)"
        )
        rss.start()
        warehouses["pg"] = PostgresWarehouse(dsn)
        warehouses["duckdb"] = DuckDBWarehouse(duck_path, memory_limit=args.duckdb_memory_limit)
        pg, duck = warehouses["pg"], warehouses["duckdb"]
        server = {name: pg.scalar(f"show {name}") for name in ("work_mem", "jit")}
        # the check reads the version's reference from the warehouse, as the monitor does
        reference = read_drift_reference(pg, MODEL_NAME, MODEL_VERSION)
        if read_drift_reference(duck, MODEL_NAME, MODEL_VERSION) != reference:
            raise AssertionError("the two warehouses hold different drift references")
        bins = sum(len(ref.edges) + 2 for ref in reference.numeric.values())
        say(
            f"opened both warehouses and read the reference ({len(reference.numeric)} numeric "
            f"features, {bins} bins with the null bins, {len(reference.categorical)} "
            f"categorical): peak RSS {rss.stop():.0f} MB"
        )

        def pg_pushdown(setting: str | None) -> Callable[[], Result]:
            def run() -> Result:
                with pg_session(pg, setting):
                    return pushdown(pg, reference)

            return run

        # PostgreSQL first: DuckDB's buffer pool, once filled, stays in this process
        methods: dict[str, Callable[[], Result]] = {
            "pg_pushdown": pg_pushdown(None),
            "pg_pushdown_work_mem": pg_pushdown(f"work_mem = '{args.pg_work_mem}'"),
            "pg_pushdown_no_jit": pg_pushdown("jit = off"),
            "pg_pull": lambda: pull(pg, reference, args.batch_rows),
            "duckdb_pushdown": lambda: pushdown(duck, reference),
            "duckdb_pull": lambda: pull(duck, reference, args.batch_rows),
        }
        best: dict[str, float] = {}
        peaks: dict[str, float] = {}
        results: dict[str, Result] = {}
        for round_ in range(args.repeat):
            for name, run in methods.items():
                rss.start()
                started = time.perf_counter()
                results[name] = run()
                elapsed = time.perf_counter() - started
                peak = rss.stop()
                best[name] = min(best.get(name, elapsed), elapsed)
                peaks[name] = max(peaks.get(name, peak), peak)
                say(f"round {round_ + 1}: {name:<21} {elapsed:7.2f} s  peak RSS {peak:4.0f} MB")
            # the correctness check: every path and warehouse, the same counts and statistics
            for name in results:
                check_same("pg_pushdown", results["pg_pushdown"], name, results[name])
        current, drift = results["pg_pushdown"]
        if current.rows != args.rows or sum(current.numeric[NUMERIC[0]]) != args.rows:
            raise AssertionError(f"counted {current.rows} rows, not {args.rows}")
    finally:
        for wh in warehouses.values():
            wh.close()
        if args.keep:
            say(f"kept PostgreSQL database {database} and {duck_path}")
        else:
            with psycopg.connect(admin, autocommit=True) as con:
                con.execute(f'drop database if exists "{database}" with (force)')
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                duck_path.unlink(missing_ok=True)
                Path(f"{duck_path}.wal").unlink(missing_ok=True)

    say(
        f"identical counts from pushdown and pull on both warehouses: "
        f"{len(NUMERIC)} numeric features, {len(CATEGORICAL)} categorical, {args.rows:,} rows"
    )
    say(
        "drift: "
        + ", ".join(f"{f.feature} {f.statistic} {f.value:.3f}" for f in drift)
        + f"; drifted: {', '.join(f.feature for f in drift if f.is_drifted) or 'none'}"
    )
    say(
        f"PostgreSQL pushdown: server settings (work_mem {server['work_mem']}, jit "
        f"{server['jit']}) {best['pg_pushdown']:.2f} s; work_mem {args.pg_work_mem} "
        f"{best['pg_pushdown_work_mem']:.2f} s "
        f"({best['pg_pushdown_work_mem'] / best['pg_pushdown']:.2f}x); jit off "
        f"{best['pg_pushdown_no_jit']:.2f} s ({best['pg_pushdown_no_jit'] / best['pg_pushdown']:.2f}x)"
    )
    for prefix, label in (("pg", "PostgreSQL"), ("duckdb", "DuckDB")):
        push, pull_ = f"{prefix}_pushdown", f"{prefix}_pull"
        say(
            f"{label:<10} pushdown {best[push]:7.2f} s ({args.rows / best[push]:11,.0f} rows/s, "
            f"peak RSS {peaks[push]:.0f} MB)   pull {best[pull_]:7.2f} s "
            f"({args.rows / best[pull_]:11,.0f} rows/s, peak RSS {peaks[pull_]:.0f} MB)"
        )
    say(f"load average {os.getloadavg()[0]:.1f} at the end")
    pg_ratio = best["pg_pushdown"] / best["pg_pull"]
    duck_ratio = best["duckdb_pushdown"] / best["duckdb_pull"]
    peak_rss = max(rss.overall, rss.read())
    print(
        f"rows={args.rows} pg_pushdown_s={best['pg_pushdown']:.2f} "
        f"pg_pull_s={best['pg_pull']:.2f} pg_pushdown_over_pull={pg_ratio:.2f} "
        f"duckdb_pushdown_s={best['duckdb_pushdown']:.2f} "
        f"duckdb_pull_s={best['duckdb_pull']:.2f} duckdb_pushdown_over_pull={duck_ratio:.2f} "
        f"peak_rss_mb={peak_rss:.0f}"
    )


if __name__ == "__main__":
    main()
