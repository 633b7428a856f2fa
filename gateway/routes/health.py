"""Readiness, liveness and Prometheus metrics: always open, never behind API keys."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import get_metrics, get_settings, get_upstream
from gateway.errors import APIError
from gateway.schemas import HealthResponse

router = APIRouter(tags=["operations"])


def ready_count(description: list[dict]) -> int:
    return sum(w.get("status") == "READY" for model in description for w in model.get("workers", []))


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(request: Request) -> JSONResponse:
    """Readiness: TorchServe answers and the default model version has a READY worker."""
    settings = get_settings(request)
    unavailable = {"status": "unavailable", "model": settings.model_name}
    retry = {"Retry-After": str(settings.retry_after_s)}
    try:
        description = await get_upstream(request).describe()
    except APIError as exc:
        return JSONResponse({**unavailable, "reason": exc.message}, status_code=503, headers=retry)
    version = description[0].get("modelVersion") if description else None
    ready = ready_count(description)
    if not ready:
        reason = f"version {version} has no READY worker"
        return JSONResponse({**unavailable, "version": version, "reason": reason}, status_code=503, headers=retry)
    return JSONResponse({"status": "ok", "model": settings.model_name, "version": version, "workers_ready": ready})


@router.get("/health/live")
async def live() -> dict:
    """Liveness: the gateway process answers (restart it if this fails)."""
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(get_metrics(request).registry), media_type=CONTENT_TYPE_LATEST)
