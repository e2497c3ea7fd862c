"""Local S3 and MongoDB servers for the embedded default.

With no ``RETAILML_S3_ENDPOINT_URL`` / ``RETAILML_MONGO_URI`` configured, the tool runs a small
supervisor process that serves:

* the S3 protocol with moto's server. moto keeps objects in memory, so the supervisor records
  every request with moto's recorder to ``<services_dir>/s3-recording.jsonl`` and replays it on
  start: the local bucket survives restarts.
* the MongoDB wire protocol with nx-27017 over SQLite files in ``<services_dir>/mongo/``.

The supervisor is detached from the caller and shared by every command (``retailml services
up|down|status``); its ports are in ``<services_dir>/services.json``. The code that talks to
them is the same boto3 and pymongo code that talks to real S3 and MongoDB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "services.json"
S3_RECORDING = "s3-recording.jsonl"
LOCAL_AWS_KEY = "local"  # the local S3 server accepts any credentials


class ServiceError(RuntimeError):
    """A local service could not be started or reached."""


@dataclass(frozen=True)
class LocalEndpoints:
    s3_endpoint_url: str
    mongo_uri: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_for_port(port: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not start listening on 127.0.0.1:{port} in {seconds:.0f}s")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(services_dir: Path) -> LocalEndpoints | None:
    """The running supervisor's endpoints, or None when it is not running."""
    state_path = services_dir / STATE_FILE
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    s3_port = int(state["s3_endpoint_url"].rsplit(":", 1)[1])
    mongo_port = int(state["mongo_uri"].rsplit(":", 1)[1].split("/")[0])
    if _pid_alive(state["pid"]) and port_open(s3_port) and port_open(mongo_port):
        return LocalEndpoints(**state)
    return None


def ensure_running(services_dir: Path, timeout: float = 60.0) -> LocalEndpoints:
    """Start the supervisor if it is not running; return its endpoints."""
    running = status(services_dir)
    if running:
        return running
    services_dir.mkdir(parents=True, exist_ok=True)
    (services_dir / STATE_FILE).unlink(missing_ok=True)
    log = open(services_dir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "retailml.sources.local_services", str(services_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = status(services_dir)
        if running:
            return running
        if process.poll() is not None:
            break
        time.sleep(0.2)
    tail = (services_dir / "supervisor.log").read_text(errors="replace")[-2000:]
    raise ServiceError(f"local S3/MongoDB services failed to start; supervisor log:\n{tail}")


def stop(services_dir: Path, timeout: float = 20.0) -> bool:
    """Stop the supervisor (and its servers). Return False when none was running."""
    state_path = services_dir / STATE_FILE
    if not state_path.exists():
        return False
    pid = json.loads(state_path.read_text())["pid"]
    if not _pid_alive(pid):
        state_path.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    state_path.unlink(missing_ok=True)
    return True


# -- the supervisor process -------------------------------------------------------------


def _serve(services_dir: Path) -> None:
    import requests
    from moto.server import ThreadedMotoServer

    services_dir.mkdir(parents=True, exist_ok=True)
    recording = services_dir / S3_RECORDING
    recording.touch()
    os.environ["MOTO_RECORDER_FILEPATH"] = str(recording)

    s3_port, mongo_port = free_port(), free_port()
    mongo = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("nx-27017")),
            "--data-dir",  # one SQLite file per logical database: databases stay isolated
            str(services_dir / "mongo"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mongo_port),
            "--log-file",
            str(services_dir / "mongo.log"),
            "--pid-file",
            str(services_dir / "mongo.pid"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()

    def shutdown(*_: object) -> None:
        requests.post(f"http://127.0.0.1:{s3_port}/moto-api/recorder/stop-recording", timeout=5)
        s3.stop()
        mongo.terminate()
        mongo.wait(timeout=10)
        (services_dir / STATE_FILE).unlink(missing_ok=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)

    _wait_for_port(s3_port, 30, "the local S3 server")
    base = f"http://127.0.0.1:{s3_port}"
    if recording.stat().st_size:
        started = time.monotonic()
        requests.post(f"{base}/moto-api/recorder/replay-recording", timeout=3600)
        print(f"replayed S3 recording in {time.monotonic() - started:.1f}s", flush=True)
    requests.post(f"{base}/moto-api/recorder/start-recording", timeout=5)
    _wait_for_port(mongo_port, 30, "the local MongoDB server (nx-27017)")

    endpoints = LocalEndpoints(
        s3_endpoint_url=base, mongo_uri=f"mongodb://127.0.0.1:{mongo_port}", pid=os.getpid()
    )
    tmp = services_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(endpoints)))
    tmp.replace(services_dir / STATE_FILE)
    print(
        f"serving S3 at {endpoints.s3_endpoint_url}, MongoDB at {endpoints.mongo_uri}", flush=True
    )
    while True:
        if mongo.poll() is not None:
            print("nx-27017 exited; stopping", flush=True)
            shutdown()
        time.sleep(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services_dir", type=Path)
    _serve(parser.parse_args().services_dir)
