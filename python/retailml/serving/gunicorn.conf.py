"""gunicorn configuration of the prediction API (production).

    gunicorn -c python/retailml/serving/gunicorn.conf.py

or ``retailml serve`` (which loads this file). Environment:

- ``RETAILML_API_HOST`` / ``RETAILML_API_PORT`` (settings) or ``RETAILML_API_BIND``;
- ``RETAILML_API_WORKERS`` (default 3), ``RETAILML_API_WORKER_CLASS`` (default ``sync``: one
  request at a time per process; the lowest tail latency measured on 2 cores, p99 8.7 ms
  against 17.7 ms for 2 gthread workers x 4 threads at the same throughput),
  ``RETAILML_API_THREADS`` (default 1; used by ``gthread``);
- ``RETAILML_API_TIMEOUT`` (default 30 s), ``RETAILML_API_MAX_REQUESTS`` (default 0: workers
  are not recycled);
- ``RETAILML_API_ACCESS_LOG``: where the access log goes (default ``-``, stdout; ``off``
  for none, e.g. when the load balancer keeps one: every prediction is in the prediction
  log anyway).

Each worker is one process with one BLAS/OpenMP thread: scoring is small and the workers
already use the cores, so more threads per worker only oversubscribe them.
"""

from __future__ import annotations

import os
import shutil

from retailml.config import load_settings

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

_settings = load_settings()

wsgi_app = "retailml.serving.app:create_app()"
bind = [os.environ.get("RETAILML_API_BIND") or f"{_settings.api_host}:{_settings.api_port}"]
workers = int(os.environ.get("RETAILML_API_WORKERS", "3"))
worker_class = os.environ.get("RETAILML_API_WORKER_CLASS", "sync")
threads = int(os.environ.get("RETAILML_API_THREADS", "1"))
timeout = int(os.environ.get("RETAILML_API_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
preload_app = False  # each worker builds its own app, clients and model after the fork
# Recycling workers is off by default: a new worker loads and verifies the model before it
# serves, which costs capacity for a second or so. Set it if memory grows in production.
max_requests = int(os.environ.get("RETAILML_API_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
limit_request_line = 4094
limit_request_fields = 50
_access = os.environ.get("RETAILML_API_ACCESS_LOG", "-")
accesslog = None if _access.lower() in ("", "off", "none") else _access
errorlog = "-"
loglevel = os.environ.get("RETAILML_API_LOG_LEVEL", "info")
proc_name = "retailml-api"
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), so
# several servers on a host would fight over it: off unless a path is given.
_control = os.environ.get("RETAILML_API_CONTROL_SOCKET")
control_socket_disable = not _control
if _control:
    control_socket = _control


def on_starting(server) -> None:
    """Give the workers a Prometheus multiprocess directory of their own (``/metrics`` sums
    the workers' files). Per master process, so a second server on the same data dir (or a
    failed start) cannot wipe a running server's metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return  # the operator chose one
    path = _settings.data_dir.resolve() / "prometheus_multiproc" / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    server._retailml_metrics_dir = path


def on_exit(server) -> None:
    path = getattr(server, "_retailml_metrics_dir", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def worker_exit(server, worker) -> None:
    """A worker that stops (restart, scale-in, ``max_requests`` recycling) first writes every
    prediction it accepted to the spool."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("retailml")
    if state is not None:
        state.close()


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
