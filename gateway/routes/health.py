"""Readiness, liveness and Prometheus metrics: always open, never behind API keys."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import get_metrics, get_settings, get_upstream
from gateway.errors import APIError
from gateway.schemas import HealthResponse
from gateway.torchserve import ready_count

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(request: Request) -> JSONResponse:
    """Readiness: not draining, TorchServe answers and the default model's default version has a READY worker.

    Every other model's READY workers are reported too, but do not decide readiness: one model
    that is down must not take the gateway, and with it every other model, out of service.
    """
    settings, upstream = get_settings(request), get_upstream(request)
    model = settings.default_model
    unavailable = {"status": "unavailable", "model": model}
    retry = {"Retry-After": str(settings.retry_after_s)}
    if request.app.state.lifecycle.draining:
        reason = "the gateway is shutting down (SIGTERM): it finishes what it has, send new requests elsewhere"
        return JSONResponse({"status": "draining", "model": model, "reason": reason}, status_code=503, headers=retry)
    try:
        names = await upstream.model_names()
        if model not in names:
            raise APIError(503, "model_not_loaded", f"model {model!r} is not registered in TorchServe")
        descriptions = dict(zip(names, await asyncio.gather(*(upstream.describe(n) for n in names)), strict=True))
    except APIError as exc:
        return JSONResponse({**unavailable, "reason": exc.message}, status_code=503, headers=retry)
    ready = {name: ready_count(description) for name, description in descriptions.items()}
    version = descriptions[model][0].get("modelVersion") if descriptions[model] else None
    if not ready[model]:
        reason = f"version {version} has no READY worker"
        answer = {**unavailable, "version": version, "reason": reason, "models": ready}
        return JSONResponse(answer, status_code=503, headers=retry)
    answer = {"status": "ok", "model": model, "version": version, "workers_ready": ready[model], "models": ready}
    return JSONResponse(answer)


@router.get("/health/live")
async def live() -> dict:
    """Liveness: the gateway process answers (restart it if this fails)."""
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(get_metrics(request).registry), media_type=CONTENT_TYPE_LATEST)
