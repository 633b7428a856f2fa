"""Prometheus metrics of the gateway, one registry per app so tests can build several apps."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.yolo_contract import answer_found

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7)


class GatewayMetrics:
    """Everything the gateway exposes on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "HTTP requests answered", ["route", "method", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Whole-request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream = Histogram(
            "gateway_upstream_duration_seconds",
            "TorchServe round-trip latency",
            ["model", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("gateway_in_flight_requests", "Requests being handled", registry=self.registry)
        self.pending = Gauge(
            "gateway_pending_predictions",
            "Requests whose body is complete, waiting for or in TorchServe (GATEWAY_MAX_PENDING_PREDICTIONS caps it)",
            registry=self.registry,
        )
        self.upload_bytes = Histogram(
            "gateway_upload_bytes", "Size of uploaded images", buckets=SIZE_BUCKETS, registry=self.registry
        )
        self.detections = Counter(
            "gateway_detections",
            "Detections returned",
            ["model", "class_name", "model_version"],
            registry=self.registry,
        )
        self.cut_uploads = Counter(
            "gateway_cut_uploads",
            "Uploads refused or cut, by reason: body_timeout and body_too_slow (408), too_many_slow_uploads and "
            "rate_limited (429), busy (503: predictions waiting for TorchServe at their limit)",
            ["reason"],
            registry=self.registry,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries",
            "Predictions sent to TorchServe a second time because the worker running them died: reported "
            "by TorchServe (worker_died) or dropped unanswered with it (lost_with_worker)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.predictions = Counter(
            "gateway_predictions",
            "Successful predictions by the model and version that answered",
            ["model", "model_version"],
            registry=self.registry,
        )

        self.prediction_errors = Counter(
            "gateway_prediction_errors",
            "Predictions TorchServe failed (5xx), by the version asked for (default: the default version's arm)",
            ["model", "model_version", "code"],
            registry=self.registry,
        )
        self.captures = Counter(
            "gateway_captures",
            "Production images captured for labelling (GATEWAY_CAPTURE_POLICY)",
            ["model"],
            registry=self.registry,
        )
        self.capture_reasons = Counter(
            "gateway_capture_reasons",
            "Why images were captured (random, drift, near_threshold, class, no_detections, many_detections)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.capture_dropped = Counter(
            "gateway_capture_dropped",
            "Captures decided but not kept: cap_minute/hour/day, queue_full, duplicate, near_duplicate, quota, "
            "disk_full, store_error (the answer is never affected)",
            ["model", "cause"],
            registry=self.registry,
        )
        self.capture_bytes = Gauge(
            "gateway_capture_bytes", "Bytes of captured images kept for the model", ["model"], registry=self.registry
        )

        self.answer_cache = Counter(
            "gateway_answer_cache_requests",
            "Answer cache lookups (GATEWAY_ANSWER_CACHE): hit (answered from the cache, TorchServe not asked; not "
            "in gateway_predictions), miss, error (the cache could not answer, e.g. Redis down: TorchServe answered)",
            ["model", "result"],
            registry=self.registry,
        )
        self.answer_cache_saved = Counter(
            "gateway_answer_cache_saved_seconds",
            "TorchServe time the cache's hits saved: each hit adds the upstream time of the answer it repeats",
            ["model"],
            registry=self.registry,
        )

    def record_prediction(self, body: dict, upstream_s: float) -> None:
        model, version = body.get("model", {}).get("name", "unknown"), body.get("model", {}).get("version", "unknown")
        self.upstream.labels(model, version).observe(upstream_s)
        self.predictions.labels(model, version).inc()
        for item in answer_found(body):  # a classifier counts its top class
            self.detections.labels(model, item["class"], version).inc()


class MetricsMiddleware:
    """Pure ASGI middleware: counts, times and tracks in-flight HTTP requests by route template."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.duration.labels(template).observe(time.perf_counter() - started)
