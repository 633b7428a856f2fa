"""App factory: ``uvicorn --factory gateway.main:create_app`` (``python -m gateway.serve`` runs it so)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.answer_cache import open_answer_cache
from gateway.canary import Canaries
from gateway.capture.policy import load_policies
from gateway.capture.store import CaptureStore
from gateway.capture.worker import Capturer
from gateway.drift import DriftCollector, DriftMonitor
from gateway.errors import install_error_handlers
from gateway.guard import UploadGuard
from gateway.lifecycle import CloseWhenDraining, Lifecycle
from gateway.limits import PendingPredictions, TokenBuckets
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.request_id import RequestIDMiddleware
from gateway.routes import admin, captures, drift, health, models, predict, ui
from gateway.settings import Settings
from gateway.state import open_store
from gateway.upstream import Upstream


def create_app(settings: Settings | None = None, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The gateway; ``lifecycle`` is how ``gateway.serve`` tells it that SIGTERM came (it drains)."""
    settings = settings or Settings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = app.state.upstream = Upstream(settings, metrics)
        answer_cache = app.state.answer_cache = open_answer_cache(
            settings.answer_cache, settings.answer_cache_ttl_s, settings.answer_cache_entries, metrics
        )
        capturer.start()
        try:
            yield
        finally:
            await capturer.stop()
            monitor.save_all()
            if answer_cache is not None:
                await answer_cache.aclose()
            await upstream.aclose()
            store.close()

    app = FastAPI(
        title="YOLO inspection gateway",
        description="Upload an image, get the predictions of any of the YOLO models TorchServe serves (every task).",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    lifecycle = app.state.lifecycle = lifecycle or Lifecycle()
    app.state.metrics = metrics
    store = app.state.store = open_store(settings.state_store)
    app.state.canaries = Canaries(store)

    async def drift_reference(model: str, version: str) -> dict | None:
        return await app.state.upstream.drift_reference(model, version)

    monitor = app.state.drift = DriftMonitor(
        store, drift_reference, settings.target_ert, settings.drift_recent_requests
    )
    metrics.registry.register(DriftCollector(monitor))
    capture_store = app.state.capture_store = CaptureStore(settings.capture_dir, store)
    capturer = app.state.capturer = Capturer(load_policies(settings.capture_policy), capture_store, metrics)
    pending = app.state.pending = PendingPredictions(
        settings.max_pending_predictions, settings.retry_after_s, metrics.cut_uploads.labels("busy").inc
    )
    metrics.pending.set_function(lambda: pending.count)
    app.state.rate_buckets = (
        TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst) if settings.rate_limit_per_s else None
    )
    install_error_handlers(app)
    app.include_router(predict.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(drift.router)
    app.include_router(captures.router)
    app.include_router(ui.router)
    app.add_middleware(UploadGuard, settings=settings, metrics=metrics)  # inside metrics: its 408/429 are counted
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(CloseWhenDraining, lifecycle=lifecycle)
    app.add_middleware(RequestIDMiddleware)  # outermost: every answer carries an X-Request-ID
    return app
