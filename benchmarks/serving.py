"""The prediction API under load: our production server against a naive Flask + pandas one.

    .venv/bin/python benchmarks/serving.py                 # 30 s each, 8 connections
    .venv/bin/python benchmarks/serving.py --duration 10 --store embedded

Prepares a small business the way production runs it: a churn pipeline built by the
trainer's ``build_pipeline`` (histogram gradient boosting with the largest settings of the
search space, fit on the synthetic training mart) registered and promoted in a PostgreSQL
registry (a scratch database, dropped at the end; the server flushes its prediction log
there every 60 s, the production default), ``marts.ml_customer_features`` materialised
into the online store (Redis by default, under a key prefix of this run that
is deleted at the end; ``--store embedded`` for SQLite), and an API key. Then:

1. **ours**: ``gunicorn -c python/retailml/serving/gunicorn.conf.py`` (the project's
   production config: 3 sync workers, one OpenMP thread each), driven by ``wrk`` on
   ``POST /v1/churn/score`` with a random customer id per request (a wrk Lua script over
   ids from the store): bearer-key check, online-store lookup, compiled inference path,
   prediction log (spooled; the server's own flusher moves it to PostgreSQL) all included;
2. **naive**: a bare Flask app under gunicorn with the same worker count, gunicorn's
   default sync workers (``--naive-worker-class gthread`` for gthread ones) and
   ``OMP_NUM_THREADS=1``, that reads the same features from the same store, builds a
   one-row DataFrame and calls the pipeline's ``predict_proba`` (no key, no log).

Each run is preceded by a short warm-up. ``errors`` counts socket errors and non-2xx
answers as wrk sees them, and every non-200 the server's own Prometheus counters report.
After our run the server is stopped gracefully and every prediction it answered must be in
the spool or the warehouse (printed as ``logged=``). ``wrk`` is installed with apt-get if
missing (as root), otherwise the script stops saying how to get it.

The last line: ``rps= p50_ms= p99_ms= errors= naive_rps= naive_p99_ms= vs_naive=``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from retailml.config import Settings, load_settings
from retailml.features.materialize import materialize_online_features
from retailml.features.online_store import RedisOnlineStore, open_online_store
from retailml.features.spec import CUSTOMER_FEATURES_TABLE, ENTITY_KEY, LABEL
from retailml.serving.auth import create_key
from retailml.serving.prediction_log import (
    PREDICTION_LOG_TABLE,
    PredictionSpool,
    prediction_spool_path,
)
from retailml.serving.server import GUNICORN_CONF
from retailml.sources.local_services import free_port
from retailml.training.churn import Candidate, build_pipeline, feature_reference
from retailml.training.common import feature_frame
from retailml.training.synthetic import make_churn_training, make_customer_features
from retailml.warehouse.postgres import PostgresWarehouse, conninfo

REPO = Path(__file__).resolve().parent.parent
# The costliest settings the trainer's search can pick for each family.
FAMILY_PARAMS: dict[str, dict[str, Any]] = {
    "hist_gradient_boosting": {
        "learning_rate": 0.1,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 20,
        "l2_regularization": 0.1,
        "max_iter": 150,
    },
    "random_forest": {"max_depth": 16, "min_samples_leaf": 10, "max_features": 0.5},
    "logistic": {"C": 1.0},
}

WRK_SCRIPT = """
local ids = {%(ids)s}
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(token)s"}
local counter = 0

setup = function(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

init = function(args)
  math.randomseed(12345 + (seed or 0))
end

request = function()
  local id = ids[math.random(#ids)]
  return wrk.format("POST", "/v1/churn/score", headers, '{"customer_id":"' .. id .. '"}')
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%%d duration_us=%%d p50_us=%%d p99_us=%%d max_us=%%d "
    .. "connect=%%d read=%%d write=%%d status=%%d timeout=%%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

NAIVE_APP = '''
"""The naive baseline: Flask, a one-row DataFrame, the pipeline's predict_proba."""
import os
import pickle

import pandas as pd
from flask import Flask, jsonify, request

from retailml.features.online_store import EmbeddedOnlineStore, RedisOnlineStore
from retailml.features.spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES


def create():
    with open(os.environ["NAIVE_MODEL"], "rb") as fh:
        pipeline = pickle.load(fh)
    if os.environ["RETAILML_ONLINE_STORE"] == "redis":
        store = RedisOnlineStore(
            os.environ["RETAILML_REDIS_URL"], prefix=os.environ["RETAILML_REDIS_PREFIX"]
        )
    else:
        store = EmbeddedOnlineStore(os.environ["NAIVE_STORE_PATH"])
    app = Flask(__name__)

    @app.post("/v1/churn/score")
    def score():
        customer_id = request.get_json()["customer_id"]
        row = store.get_many([customer_id])[0]
        if row is None:
            return jsonify(error="unknown customer"), 404
        frame = pd.DataFrame([{f: row.get(f) for f in FEATURES}], columns=list(FEATURES))
        for col in NUMERIC_FEATURES:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        for col in CATEGORICAL_FEATURES:
            frame[col] = frame[col].astype(object)
        proba = pipeline.predict_proba(frame)
        return jsonify(customer_id=customer_id, score=float(proba[0, 1]))

    return app
'''


def say(message: str) -> None:
    print(message, flush=True)


# -- preparation ---------------------------------------------------------------------------
def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        say("wrk not found: installing it with apt-get")
        if subprocess.run([apt, "install", "-y", "-qq", "wrk"], capture_output=True).returncode:
            subprocess.run([apt, "update", "-qq"], capture_output=True)
            subprocess.run([apt, "install", "-y", "-qq", "wrk"], capture_output=True)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit(
        "benchmarks/serving.py needs the wrk load generator: `apt-get install -y wrk` "
        "(Debian/Ubuntu, as root) or `brew install wrk`, then run it again"
    )


def train(family: str, customers: int, seed: int) -> tuple[Any, dict[str, Any], Any]:
    """(fitted pipeline, training fingerprint, the training frame)."""
    data = make_churn_training(customers, 8, seed=seed)
    x = feature_frame(data)
    y = data.column(LABEL).to_numpy(zero_copy_only=False).astype(np.int64)
    candidate = Candidate(f"{family}_bench", family, FAMILY_PARAMS[family], random_state=seed)
    pipeline = build_pipeline(candidate.make()).fit(x, y)
    fingerprint = {
        "table": "synthetic marts.ml_churn_training",
        "row_count": data.num_rows,
        "feature_reference": feature_reference(x),
    }
    return pipeline, fingerprint, candidate


@contextlib.contextmanager
def scratch_database(settings: Settings) -> Iterator[str]:
    name = f"retailml_bench_serving_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo(settings, "postgres"), autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(conninfo(settings, "postgres"), autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_redis_prefix(settings: Settings) -> None:
    store = RedisOnlineStore(settings.redis_url, prefix=settings.redis_prefix)
    try:
        for key in store.client.scan_iter(f"{settings.redis_prefix}:*", count=1000):
            store.client.delete(key)
    finally:
        store.close()


def environment(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETAILML_")}
    env.update(
        {
            "RETAILML_DATA_DIR": str(settings.data_dir),
            "RETAILML_WAREHOUSE": settings.warehouse,
            "RETAILML_PG_HOST": settings.pg_host,
            "RETAILML_PG_PORT": str(settings.pg_port),
            "RETAILML_PG_USER": settings.pg_user,
            "RETAILML_PG_DATABASE": settings.pg_database,
            "RETAILML_MODEL_STORE": settings.model_store_uri,
            "RETAILML_ONLINE_STORE": settings.online_store,
            "RETAILML_REDIS_URL": settings.redis_url,
            "RETAILML_REDIS_PREFIX": settings.redis_prefix,
            "RETAILML_API_HOST": "127.0.0.1",
            "RETAILML_API_PORT": str(settings.api_port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO / "python"),
        }
    )
    password = settings.pg_password.get_secret_value()
    if password:
        env["RETAILML_PG_PASSWORD"] = password
    env.update(extra or {})
    return env


# -- servers and load ----------------------------------------------------------------------
def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"server not ready at {url} after {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # graceful: workers finish and drain their logs
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_wrk(
    wrk: str, url: str, script: Path, *, seconds: int, connections: int, threads: int
) -> dict[str, float]:
    out = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    match = re.search(r"WRK_RESULT (.*)", out.stdout)
    if out.returncode or match is None:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    values = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    values["rps"] = values["requests"] / (values["duration_us"] / 1e6)
    values["errors"] = sum(values[k] for k in ("connect", "read", "write", "status", "timeout"))
    return values


def served_statuses(metrics_url: str, endpoint: str) -> dict[str, float]:
    """Requests to ``endpoint`` by status, from the server's Prometheus counters."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    pattern = re.compile(r"^retailml_http_requests_total\{(.*)\} (\S+)$")
    for line in text.splitlines():
        found = pattern.match(line)
        if not found:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if labels.get("endpoint") == endpoint:
            counts[labels["status"]] = counts.get(labels["status"], 0) + float(found.group(2))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (both servers)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gthread worker")
    parser.add_argument(
        "--worker-class",
        choices=["gthread", "sync"],
        default="sync",
        help="ours (production: sync)",
    )
    parser.add_argument(
        "--naive-worker-class",
        choices=["gthread", "sync"],
        default="sync",
        help="the naive server's (gunicorn's default, sync, is what a bare app gets)",
    )
    parser.add_argument("--customers", type=int, default=20_000, help="customers in the store")
    parser.add_argument("--train-customers", type=int, default=3_000)
    parser.add_argument("--family", choices=sorted(FAMILY_PARAMS), default="hist_gradient_boosting")
    parser.add_argument("--store", choices=["redis", "embedded"], default="redis")
    parser.add_argument("--access-log", action="store_true", help="keep gunicorn's access log")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    wrk = ensure_wrk()
    base = load_settings()
    tmp = Path(tempfile.mkdtemp(prefix="retailml-bench-serving-"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with scratch_database(base) as database:
            settings = base.model_copy(
                update={
                    "data_dir": tmp / "data",
                    "warehouse": "postgres",
                    "pg_database": database,
                    "model_store": str(tmp / "models"),
                    "online_store": args.store,
                    "redis_prefix": f"bench-serving-{uuid.uuid4().hex[:8]}",
                    "api_port": free_port(),
                }
            )
            try:
                result = _run(args, wrk, settings, tmp, servers)
            finally:
                for process in servers:
                    stop(process)
                if args.store == "redis":
                    delete_redis_prefix(settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(" ".join(f"{k}={v}" for k, v in result.items()))


def _run(
    args: argparse.Namespace,
    wrk: str,
    settings: Settings,
    tmp: Path,
    servers: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    from retailml.runtime import open_registry

    started = time.perf_counter()
    pipeline, fingerprint, candidate = train(args.family, args.train_customers, args.seed)
    say(f"trained {candidate.family} {candidate.params} in {time.perf_counter() - started:.1f} s")
    warehouse = PostgresWarehouse(conninfo(settings))
    try:
        registry = open_registry(settings, warehouse)
        version = registry.register(
            "churn",
            pipeline,
            kind="sklearn",
            params={"estimator": candidate.name, "family": candidate.family},
            metrics={"note": "benchmark model"},
            fingerprint=fingerprint,
        )
        registry.set_alias("churn", version.version, "production", "benchmark")
        mart = make_customer_features(args.customers, seed=args.seed + 1)
        warehouse.create_table(CUSTOMER_FEATURES_TABLE, mart.schema)
        warehouse.append_arrow(CUSTOMER_FEATURES_TABLE, mart)
        store = open_online_store(settings)
        materialized = materialize_online_features(warehouse, store)
        store.close()
    finally:
        warehouse.close()
    ids = mart.column(ENTITY_KEY).to_pylist()
    rng = np.random.default_rng(args.seed)
    sample = [ids[i] for i in rng.choice(len(ids), min(5_000, len(ids)), replace=False)]
    say(f"registered churn v{version.version}; {materialized} customers in the {args.store} store")
    token = create_key(settings.api_keys_path, "benchmark", ["predict"])
    script = tmp / "score.lua"
    script.write_text(WRK_SCRIPT % {"ids": ",".join(f'"{i}"' for i in sample), "token": token})

    common = {
        "RETAILML_API_WORKERS": str(args.workers),
        "RETAILML_API_THREADS": str(args.threads),
        "RETAILML_API_WORKER_CLASS": args.worker_class,
        "RETAILML_API_ACCESS_LOG": "-" if args.access_log else "off",
        "RETAILML_API_LOG_LEVEL": "warning",
    }
    port = settings.api_port
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "ours.log"
    with open(log_path, "wb") as server_log:
        ours = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)],
            env=environment(settings, common),
            cwd=tmp,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
    servers.append(ours)
    wait_ready(f"{url}/readyz", ours)
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{url}/v1/models/churn", headers={"Authorization": f"Bearer {token}"}
        )
    ) as response:
        inference = json.load(response)["inference"]
    say(
        f"ours: gunicorn, {args.workers} {args.worker_class} workers x {args.threads} threads; "
        f"inference {inference}"
    )
    run_wrk(wrk, f"{url}/v1/churn/score", script, seconds=args.warmup,
            connections=args.connections, threads=args.wrk_threads)  # fmt: skip
    before = served_statuses(f"{url}/metrics", "/v1/churn/score")
    load_before = os.getloadavg()
    ours_result = run_wrk(wrk, f"{url}/v1/churn/score", script, seconds=args.duration,
                          connections=args.connections, threads=args.wrk_threads)  # fmt: skip
    after = served_statuses(f"{url}/metrics", "/v1/churn/score")
    measured = {s: after.get(s, 0) - before.get(s, 0) for s in after}
    non_200 = sum(v for s, v in measured.items() if s != "200")
    served = sum(after.values())
    say(
        f"ours: {ours_result['requests']:.0f} requests in {ours_result['duration_us'] / 1e6:.1f} s, "
        f"server statuses {measured}, load average before {load_before[0]:.2f} "
        f"after {os.getloadavg()[0]:.2f}"
    )
    stop(ours)
    spooled = PredictionSpool(prediction_spool_path(settings)).count()
    warehouse = PostgresWarehouse(conninfo(settings))
    try:
        flushed = (
            warehouse.scalar(f"select count(*) from {PREDICTION_LOG_TABLE}") or 0
            if warehouse.columns(PREDICTION_LOG_TABLE)
            else 0  # no flush round yet (every 60 s)
        )
    finally:
        warehouse.close()
    logged = spooled + int(flushed)
    say(f"prediction log: {logged} of {served:.0f} answered (spool {spooled}, warehouse {flushed})")
    if logged < served:
        say(f"ERROR: {served - logged:.0f} answered predictions are missing from the log")

    naive_result: dict[str, float] = {"rps": float("nan"), "p99_us": float("nan")}
    if not args.skip_naive:
        model_path = tmp / "naive-model.pkl"
        model_path.write_bytes(pickle.dumps(pipeline))
        (tmp / "naive_app.py").write_text(textwrap.dedent(NAIVE_APP))
        naive_port = free_port()
        naive_env = environment(
            settings,
            {
                "NAIVE_MODEL": str(model_path),
                "NAIVE_STORE_PATH": str(settings.data_dir / "online_store.sqlite3"),
            },
        )
        # gunicorn turns sync workers with threads > 1 into gthread ones
        naive_threads = args.threads if args.naive_worker_class == "gthread" else 1
        naive = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "--chdir", str(tmp),
                "-b", f"127.0.0.1:{naive_port}", "-w", str(args.workers),
                "-k", args.naive_worker_class, "--threads", str(naive_threads), "--log-level", "warning", "--no-control-socket",
                *(["--access-logfile", "-"] if args.access_log else []),
                "naive_app:create()",
            ],
            env=naive_env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        servers.append(naive)
        naive_url = f"http://127.0.0.1:{naive_port}/v1/churn/score"
        _wait_port(naive_url, naive)
        run_wrk(wrk, naive_url, script, seconds=args.warmup, connections=args.connections,
                threads=args.wrk_threads)  # fmt: skip
        naive_result = run_wrk(wrk, naive_url, script, seconds=args.duration,
                               connections=args.connections, threads=args.wrk_threads)  # fmt: skip
        say(
            f"naive: {naive_result['requests']:.0f} requests, {naive_result['errors']:.0f} errors,"
            f" load average after {os.getloadavg()[0]:.2f}"
        )
        stop(naive)

    errors = int(ours_result["errors"] + non_200 + max(0.0, served - logged))
    say(
        f"setup: {args.store} online store, {args.family}, gunicorn {args.workers} "
        f"{args.worker_class} workers x {args.threads} threads (naive: "
        f"{args.naive_worker_class}), wrk {args.wrk_threads} thread x {args.connections} connections, "
        f"{args.duration} s per server"
    )
    return {
        "rps": round(ours_result["rps"], 1),
        "p50_ms": round(ours_result["p50_us"] / 1000, 2),
        "p99_ms": round(ours_result["p99_us"] / 1000, 2),
        "errors": errors,
        "naive_rps": round(naive_result["rps"], 1),
        "naive_p99_ms": round(naive_result["p99_us"] / 1000, 2),
        "vs_naive": round(ours_result["rps"] / naive_result["rps"], 2),
    }


def _wait_port(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    """Until the naive server answers a request (it has no readiness endpoint)."""
    deadline = time.monotonic() + timeout_s
    body = json.dumps({"customer_id": "probe"}).encode()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"naive server exited with {process.returncode}")
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered (404 for the probe id)
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    raise SystemExit(f"naive server not answering at {url}")


if __name__ == "__main__":
    main()
