"""Prometheus metrics of one app: request counts and latencies, predictions, model version.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (tests build many apps).
Under gunicorn with several workers ``PROMETHEUS_MULTIPROC_DIR`` is set (see
``gunicorn.conf.py``) and ``/metrics`` aggregates every worker's files instead.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "retailml_http_requests",
            "HTTP requests by endpoint and status.",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "retailml_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "retailml_predictions",
            "Scored customers by model and feature source.",
            ["model", "source"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "retailml_model_version",
            "Version of the served model (0: none loaded).",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.prediction_log_dropped = Counter(
            "retailml_prediction_log_dropped",
            "Predictions that could not be written to the prediction log spool.",
            registry=self.registry,
        )
        self.prediction_log_flushed = Counter(
            "retailml_prediction_log_flushed",
            "Spooled predictions moved into the warehouse by this server.",
            registry=self.registry,
        )
        self.prediction_log_flush_errors = Counter(
            "retailml_prediction_log_flush_errors",
            "Failed rounds of moving spooled predictions into the warehouse.",
            registry=self.registry,
        )

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count a request and its latency (label children cached: this runs per request)."""
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, endpoint, str(status)),
                self.latency.labels(method, endpoint),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The exposition text (all workers' metrics in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
