"""The production server for real: gunicorn with the project's config, a PostgreSQL registry
and warehouse, the Redis online store, HTTP clients on keep-alive connections.

- production moves to new versions under load: no request fails, each connection sees
  versions only move forward, every score is the one its version's pipeline gives;
- every answered prediction is in the prediction log after a graceful stop and across a
  worker restart (SIGHUP), and after a warehouse outage the log arrives exactly once;
- a flush cut off mid-way (the connection to PostgreSQL dropped during COPY) keeps the
  rows and delivers them once on the next flush.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from retailml import runtime
from retailml.config import Settings
from retailml.features.online_store import RedisOnlineStore
from retailml.features.spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from retailml.serving import auth
from retailml.serving.model import to_frame
from retailml.serving.prediction_log import (
    PREDICTION_LOG_TABLE,
    PredictionRecord,
    PredictionSpool,
    flush_prediction_log,
    prediction_spool_path,
)
from retailml.serving.server import GUNICORN_CONF
from retailml.sources.local_services import free_port, port_open
from retailml.warehouse.postgres import PostgresWarehouse, conninfo
from tests.serving_support import synthetic_features, train_pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

N_CUSTOMERS = 200


# -- a TCP proxy in front of PostgreSQL: the warehouse outage ----------------------------------
class Proxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; :meth:`cut` drops every connection and
    refuses new ones until :meth:`restore`; ``cut_after_bytes`` cuts once that many bytes
    went upstream (a connection lost in the middle of a COPY)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.cut_after_bytes: int | None = None
        self.sent = 0
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream:
                    with self._lock:
                        self.sent += len(data)
                        over = self.cut_after_bytes is not None and self.sent > self.cut_after_bytes
                    if over:
                        self.cut_after_bytes = None
                        self.cut()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self.down.set()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


# -- a deployment: registry, online store, key, server -----------------------------------------
@dataclass
class Deployment:
    settings: Settings
    token: str
    ids: list[str]
    features: dict[str, dict[str, Any]]
    pipelines: dict[int, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def port(self) -> int:
        return self.settings.api_port

    def publish(self, pipeline: Any) -> int:
        """Register ``pipeline`` and make it production (what training + promotion do)."""
        registry = runtime.open_registry(self.settings)
        try:
            version = registry.register(
                "churn",
                pipeline,
                kind="sklearn",
                params={},
                metrics={"roc_auc": 0.8},
                fingerprint={"rows": 600},
            )
            registry.set_alias("churn", version.version, "production", "test")
        finally:
            registry.warehouse.close()
        self.pipelines[version.version] = pipeline
        return version.version

    def start(self, **env: str) -> None:
        assert self.log_path is not None
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RETAILML_")}
        s = self.settings
        environment.update(
            {
                "RETAILML_DATA_DIR": str(s.data_dir),
                "RETAILML_WAREHOUSE": "postgres",
                "RETAILML_PG_HOST": s.pg_host,
                "RETAILML_PG_PORT": str(s.pg_port),
                "RETAILML_PG_USER": s.pg_user,
                "RETAILML_PG_DATABASE": s.pg_database,
                "RETAILML_MODEL_STORE": s.model_store_uri,
                "RETAILML_ONLINE_STORE": "redis",
                "RETAILML_REDIS_URL": s.redis_url,
                "RETAILML_REDIS_PREFIX": s.redis_prefix,
                "RETAILML_API_PORT": str(s.api_port),
                "RETAILML_API_WORKERS": "2",
                "RETAILML_API_THREADS": "4",
                "RETAILML_API_ACCESS_LOG": "off",
                **env,
            }
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)],
                env=environment,
                cwd=s.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180  # workers import, load and verify (a busy CI box)
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.server_log()
            if port_open(self.port) and self.get("/readyz", timeout_s=120)[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"server not ready:\n{self.server_log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"server did not stop:\n{self.server_log()}") from None

    def server_log(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path else ""

    def get(self, path: str, token: str | None = None, timeout_s: float = 30) -> tuple[int, Any]:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            con.request("GET", path, headers=headers)
            response = con.getresponse()
            data = response.read()
            kind = response.getheader("Content-Type", "")
            return response.status, json.loads(data) if "json" in kind else data.decode()
        finally:
            con.close()

    def logged_request_ids(self) -> list[str]:
        """Request ids in this host's spool and in the warehouse table."""
        spool = PredictionSpool(prediction_spool_path(self.settings))
        ids = [r[0] for r in spool._con().execute("select request_id from spool").fetchall()]
        spool.close()
        warehouse = PostgresWarehouse(conninfo(self.settings))
        try:
            if warehouse.columns(PREDICTION_LOG_TABLE):
                table = warehouse.query_arrow(f"select request_id from {PREDICTION_LOG_TABLE}")
                ids += table.column(0).to_pylist()
        finally:
            warehouse.close()
        return ids


@pytest.fixture
def deployment(
    tmp_path: Path, postgres_server: dict[str, Any], pg_database: str, redis_url: str
) -> Iterator[Deployment]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        warehouse="postgres",
        pg_host=postgres_server["host"],
        pg_port=postgres_server["port"],
        pg_user=postgres_server["user"],
        pg_database=pg_database,
        model_store=str(tmp_path / "models"),
        online_store="redis",
        redis_url=redis_url,
        redis_prefix=f"test-serving-{uuid.uuid4().hex[:10]}",
        api_port=free_port(),
        _env_file=None,
    )
    settings.data_dir.mkdir(parents=True)
    frame = synthetic_features(N_CUSTOMERS, seed=11)
    ids = [f"C{i:07d}" for i in range(N_CUSTOMERS)]
    frame.insert(0, "customer_id", ids)
    store = RedisOnlineStore(redis_url, prefix=settings.redis_prefix)
    store.put_customer_features(pa.Table.from_pandas(frame, preserve_index=False))
    store.close()
    records = frame.to_dict("records")
    features = {r["customer_id"]: {f: r[f] for f in FEATURES} for r in records}
    token = auth.create_key(settings.api_keys_path, "load", ["predict"])
    deployment = Deployment(settings, token, ids, features, log_path=tmp_path / "gunicorn.log")
    deployment.publish(train_pipeline(0))
    yield deployment
    deployment.stop()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{settings.redis_prefix}:*"):
        client.delete(key)
    client.close()


# -- load ---------------------------------------------------------------------------------------
@dataclass
class Answer:
    connection: int
    status: int
    version: int | None
    request_id: str | None
    customer_id: str
    score: float | None


class Load:
    """``connections`` clients, each on one keep-alive connection, scoring random ids.

    ``retry_stale``: a request on a connection the server closed before answering anything
    (a worker that restarted) is sent again on a new connection, as load balancers do;
    nothing is retried once a response has started.
    """

    def __init__(self, deployment: Deployment, connections: int, *, retry_stale: bool = False):
        self.deployment = deployment
        self.connections = connections
        self.retry_stale = retry_stale
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self.stale_retries = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(connections)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        headers = {
            "Authorization": f"Bearer {self.deployment.token}",
            "Content-Type": "application/json",
        }
        con = http.client.HTTPConnection("127.0.0.1", self.deployment.port, timeout=30)
        while not self._stop.is_set():
            customer = rng.choice(self.deployment.ids)
            body = json.dumps({"customer_id": customer})
            try:
                con.request("POST", "/v1/churn/score", body=body, headers=headers)
                response = con.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                con.close()
                con = http.client.HTTPConnection("127.0.0.1", self.deployment.port, timeout=30)
                if self.retry_stale:
                    with self._lock:
                        self.stale_retries += 1
                    continue
                with self._lock:
                    self.failures.append(f"connection {n}: {type(exc).__name__}: {exc}")
                continue
            except OSError as exc:
                with self._lock:
                    self.failures.append(f"connection {n}: {type(exc).__name__}: {exc}")
                con.close()
                con = http.client.HTTPConnection("127.0.0.1", self.deployment.port, timeout=30)
                time.sleep(0.05)
                continue
            data = response.read()
            parsed = json.loads(data) if data else {}
            answer = Answer(
                connection=n,
                status=response.status,
                version=(parsed.get("model") or {}).get("version"),
                request_id=response.getheader("X-Request-ID"),
                customer_id=customer,
                score=parsed.get("score"),
            )
            with self._lock:
                self.answers.append(answer)
            if response.getheader("Connection", "").lower() == "close":
                con.close()
                con = http.client.HTTPConnection("127.0.0.1", self.deployment.port, timeout=30)
        con.close()

    def wait_for(self, n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.answers) >= n, f"only {len(self.answers)} answers: {self.failures[:3]}"


def _expected_score(deployment: Deployment, answer: Answer) -> float:
    pipeline = deployment.pipelines[answer.version]  # type: ignore[index]
    return float(pipeline.predict_proba(to_frame([deployment.features[answer.customer_id]]))[0, 1])


# -- the tests -----------------------------------------------------------------------------------
def test_production_moves_under_load_without_a_failed_request(deployment):
    deployment.start(RETAILML_API_MODEL_REFRESH_S="0.2", RETAILML_PREDICTION_LOG_FLUSH_S="0")
    with Load(deployment, connections=6) as load:
        load.wait_for(300)
        deployment.publish(train_pipeline(1))
        load.wait_for(len(load.answers) + 300)
        deployment.publish(train_pipeline(2))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until every connection has seen the switch
            latest = {a.connection: a.version for a in load.answers}
            if len(latest) == 6 and set(latest.values()) == {3}:
                break
            time.sleep(0.1)
        load.wait_for(len(load.answers) + 200)
    assert load.failures == []
    assert {a.status for a in load.answers} == {200}
    assert {a.version for a in load.answers} == {1, 2, 3}
    for connection in range(6):
        versions = [a.version for a in load.answers if a.connection == connection]
        assert versions == sorted(versions), f"connection {connection} went back a version"
        assert versions[-1] == 3
    for answer in random.Random(0).sample(load.answers, 60):
        assert answer.score == pytest.approx(_expected_score(deployment, answer), abs=1e-12)
    status, model = deployment.get("/v1/models/churn", deployment.token)
    assert status == 200 and model["version"] == 3
    assert model["inference"]["path"] == "compiled"
    status, metrics = deployment.get("/metrics")
    assert 'retailml_model_version{model="churn"} 3.0' in metrics

    # a graceful stop writes every accepted prediction to the spool first
    deployment.stop()
    answered = {a.request_id for a in load.answers}
    logged = deployment.logged_request_ids()
    assert answered <= set(logged)
    assert len(logged) == len(set(logged))


def test_a_worker_restart_keeps_every_answered_prediction(deployment):
    deployment.start(RETAILML_PREDICTION_LOG_FLUSH_S="0")
    with Load(deployment, connections=4, retry_stale=True) as load:
        load.wait_for(200)
        deployment.process.send_signal(signal.SIGHUP)  # new workers, old ones stop gracefully
        time.sleep(3)
        load.wait_for(len(load.answers) + 300)
    assert load.failures == []
    assert {a.status for a in load.answers} == {200}
    assert deployment.get("/readyz")[0] == 200
    deployment.stop()
    answered = [a.request_id for a in load.answers]
    logged = set(deployment.logged_request_ids())
    missing = [r for r in answered if r not in logged]
    assert missing == [], f"{len(missing)} of {len(answered)} answered predictions not logged"


def test_the_prediction_log_survives_a_warehouse_outage(deployment):
    proxy = Proxy((deployment.settings.pg_host, int(deployment.settings.pg_port)))
    try:
        # the server reaches the warehouse (registry and prediction log) through the proxy
        deployment.start(
            RETAILML_PG_PORT=str(proxy.port),
            RETAILML_PREDICTION_LOG_FLUSH_S="0.3",
            RETAILML_API_MODEL_REFRESH_S="0.5",
        )
        with Load(deployment, connections=4) as load:
            load.wait_for(200)
            proxy.cut()
            outage_starts = len(load.answers)
            # predictions go on while the warehouse is gone, until a flush has failed on it
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _flush_errors(deployment) == 0:
                time.sleep(0.2)
            time.sleep(1)
            during = len(load.answers) - outage_starts
            noticed = _flush_errors(deployment)
            proxy.restore()
            load.wait_for(len(load.answers) + 200)
        assert load.failures == []
        assert {a.status for a in load.answers} == {200}
        assert noticed > 0, f"the outage was not noticed:\n{deployment.server_log()}"
        assert during > 50
        answered = {a.request_id for a in load.answers}
        warehouse = PostgresWarehouse(conninfo(deployment.settings))  # direct, not proxied
        try:
            deadline = time.monotonic() + 30
            in_warehouse: list[str] = []
            while time.monotonic() < deadline:
                # the first flush may come after the outage: the table may not exist yet
                if warehouse.table_exists(PREDICTION_LOG_TABLE):
                    rows = warehouse.query_arrow(f"select request_id from {PREDICTION_LOG_TABLE}")
                    in_warehouse = rows.column(0).to_pylist()
                    if set(in_warehouse) >= answered:
                        break
                time.sleep(0.3)
        finally:
            warehouse.close()
        assert answered <= set(in_warehouse), "answered predictions missing after the outage"
        assert len(in_warehouse) == len(set(in_warehouse)), "duplicates in the warehouse"
    finally:
        deployment.stop()
        proxy.close()


def _flush_errors(deployment: Deployment) -> float:
    _, metrics = deployment.get("/metrics")
    for line in metrics.splitlines():
        if line.startswith("retailml_prediction_log_flush_errors_total"):
            return float(line.split()[-1])
    return 0.0


def test_a_flush_cut_off_during_copy_keeps_the_rows(tmp_path, postgres_server, pg_database):
    spool = PredictionSpool(tmp_path / "spool.sqlite3")
    now = time.time()
    import datetime as dt

    spool.append(
        [
            PredictionRecord(
                request_id=f"r{i:06d}",
                predicted_at=dt.datetime.fromtimestamp(now, dt.UTC),
                model_name="churn",
                model_version=1,
                customer_id=f"C{i:07d}",
                features={f: float(i) for f in NUMERIC_FEATURES}
                | {f: "x" * 40 for f in CATEGORICAL_FEATURES},
                score=0.5,
                latency_ms=1.0,
            )
            for i in range(6_000)
        ]
    )
    proxy = Proxy((postgres_server["host"], int(postgres_server["port"])))
    direct = f"host={postgres_server['host']} port={postgres_server['port']} user={postgres_server['user']} dbname={pg_database}"
    proxied = (
        f"host=127.0.0.1 port={proxy.port} user={postgres_server['user']} dbname={pg_database}"
    )
    try:
        warehouse = PostgresWarehouse(proxied)
        # a batch of 2,000 rows is about 1 MB on the wire: cut in the middle of the second
        proxy.cut_after_bytes = proxy.sent + 1_500_000
        with pytest.raises(Exception):  # noqa: B017 - whatever psycopg raises on a lost server
            flush_prediction_log(spool, warehouse, batch_rows=2_000)
        with contextlib.suppress(Exception):
            warehouse.close()
        left = spool.count()
        check = PostgresWarehouse(direct)
        try:
            committed = check.scalar(f"select count(*) from {PREDICTION_LOG_TABLE}")
            assert 0 < committed < 6_000, committed  # some batches made it, one was cut off
            assert committed + left == 6_000  # nothing lost: what did not commit is spooled
        finally:
            check.close()
        proxy.restore()
        warehouse = PostgresWarehouse(proxied)
        try:
            assert flush_prediction_log(spool, warehouse, batch_rows=2_000) == left
        finally:
            warehouse.close()
        check = PostgresWarehouse(direct)
        try:
            ids = check.query_arrow(f"select request_id from {PREDICTION_LOG_TABLE}")
            ids = ids.column(0).to_pylist()
        finally:
            check.close()
        assert sorted(ids) == [f"r{i:06d}" for i in range(6_000)]
        assert spool.count() == 0
    finally:
        proxy.close()
        spool.close()
