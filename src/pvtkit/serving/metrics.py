"""The server's Prometheus metrics, beside KServe's own (`request_predict_seconds`, ...) on `GET /metrics`."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    errors: Counter
    latency: Histogram
    inference_seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge


# Registered once per process in prometheus_client's default registry (which KServe's /metrics handler reads).
METRICS = Metrics(
    requests=Counter("pvtkit_requests", "HTTP requests answered, by route and status code", ["route", "code"]),
    errors=Counter("pvtkit_request_errors", "requests answered with an error, by kind", ["kind"]),
    latency=Histogram(
        "pvtkit_request_duration_seconds",
        "time from request to response, by route",
        ["route"],
        buckets=_LATENCY_BUCKETS,
    ),
    inference_seconds=Histogram(
        "pvtkit_inference_seconds",
        "time a request's images spent queued and in the model",
        ["model"],
        buckets=_LATENCY_BUCKETS,
    ),
    batch_size=Histogram(
        "pvtkit_batch_size", "images per forward pass", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
    ),
    queue_depth=Gauge("pvtkit_queue_depth", "images waiting for a forward pass", ["model"]),
)

# Status code -> the error kind counted in pvtkit_request_errors.
ERROR_KINDS = {
    400: "bad_input",
    404: "not_found",
    405: "bad_method",
    413: "too_large",
    415: "bad_content_type",
    422: "bad_input",
    500: "internal",
    503: "overloaded",
    504: "timeout",
}
