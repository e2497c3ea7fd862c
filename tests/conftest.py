"""Shared fixtures: real services, started privately when the configured ones do not answer.

PostgreSQL: the configured server (RETAILML_PG_HOST/PORT/USER, default 127.0.0.1:5432), else a
private cluster from the system's PostgreSQL binaries. Redis: RETAILML_TEST_REDIS_URL (default
redis://127.0.0.1:6379/15), else a private redis-server. S3 and MongoDB: the project's own local
servers (moto, nx-27017) in a temporary folder. A service that cannot be had fails the tests
that need it with a clear message; nothing is skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from retailml.config import Settings
from retailml.sources import local_services


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; a developer's .env must not leak in."""
    monkeypatch.chdir(Path(__file__).parent)


# -- PostgreSQL -------------------------------------------------------------------------


def _pg_answers(host: str, port: int, user: str) -> bool:
    try:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _start_private_postgres(root: Path) -> tuple[str, int, subprocess.Popen[bytes] | None]:
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        pytest.fail(
            "no PostgreSQL answers at the configured address and no PostgreSQL binaries "
            "(/usr/lib/postgresql/*/bin) to start a private one: install PostgreSQL or set "
            "RETAILML_PG_HOST/RETAILML_PG_PORT",
            pytrace=False,
        )
    bindir = Path(binaries[-1]).parent
    data, sock = root / "data", root / "sock"
    port = local_services.free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the 'postgres' user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and no 'postgres' user to own a private cluster")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    sock.mkdir(parents=True, exist_ok=True)
    if as_user:
        shutil.chown(sock, "postgres")
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "pg.log"),
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    return "127.0.0.1", port, None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict[str, object]]:
    host = os.environ.get("RETAILML_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("RETAILML_PG_PORT", "5432"))
    user = os.environ.get("RETAILML_PG_USER", "postgres")
    private: Path | None = None
    if not _pg_answers(host, port, user):
        private = Path(tempfile.mkdtemp(prefix="retailml-pg-"))
        host, port, _ = _start_private_postgres(private)
        user = "postgres"
    yield {"host": host, "port": port, "user": user}
    if private is not None:
        bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(private / "data"), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture
def pg_database(postgres_server: dict[str, object]) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"retailml_test_{uuid.uuid4().hex[:10]}"
    conn = {k: postgres_server[k] for k in ("host", "port", "user")}
    with psycopg.connect(**conn, dbname="postgres", autocommit=True) as con:  # type: ignore[arg-type]
        con.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(**conn, dbname="postgres", autocommit=True) as con:  # type: ignore[arg-type]
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Redis ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    url = os.environ.get("RETAILML_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        yield url
        return
    except redis.RedisError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            f"no Redis answers at {url} and no redis-server binary to start a private one: "
            "install Redis or set RETAILML_TEST_REDIS_URL",
            pytrace=False,
        )
    port = local_services.free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not local_services.port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/15"
    process.terminate()
    process.wait(timeout=10)


# -- S3 and MongoDB (the project's local servers) ------------------------------------------


@pytest.fixture(scope="session")
def local_sources(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[local_services.LocalEndpoints]:
    services_dir = tmp_path_factory.mktemp("services")
    endpoints = local_services.ensure_running(services_dir)
    yield endpoints
    local_services.stop(services_dir)


@pytest.fixture
def settings(
    tmp_path: Path, local_sources: local_services.LocalEndpoints, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Embedded-default settings in a temporary folder, with a bucket/database of its own."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", local_services.LOCAL_AWS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", local_services.LOCAL_AWS_KEY)
    unique = uuid.uuid4().hex[:8]
    return Settings(
        data_dir=tmp_path / "state",
        s3_endpoint_url=local_sources.s3_endpoint_url,
        mongo_uri=local_sources.mongo_uri,
        s3_bucket=f"landing-{unique}",
        mongo_database=f"shop_{unique}",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def pg_settings(
    settings: Settings, postgres_server: dict[str, object], pg_database: str
) -> Settings:
    return settings.model_copy(
        update={
            "warehouse": "postgres",
            "pg_host": postgres_server["host"],
            "pg_port": postgres_server["port"],
            "pg_user": postgres_server["user"],
            "pg_database": pg_database,
        }
    )


# -- Prefect ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect test harness (a real temporary API server) for the whole session; yields
    its API URL, for subprocesses (``prefect deploy``, workers) to use."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
