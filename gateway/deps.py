"""Request dependencies: the app's shared objects and the optional API-key check."""

from __future__ import annotations

import secrets

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from gateway.canary import Canaries
from gateway.errors import APIError
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.upstream import TorchServeClient

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when GATEWAY_API_KEYS is set")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_upstream(request: Request) -> TorchServeClient:
    return request.app.state.upstream


def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def get_canaries(request: Request) -> Canaries:
    return request.app.state.canaries


async def require_api_key(request: Request, api_key: str | None = Security(api_key_header)) -> None:
    """Accept ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` when keys are configured.

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hand-off on every request of the hot path.
    """
    allowed = get_settings(request).api_key_set
    if not allowed:
        return
    presented = api_key
    if presented is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else None
    if not presented:
        raise APIError(
            401,
            "unauthorized",
            "An API key is required: send it in the X-API-Key header.",
            {"WWW-Authenticate": "Bearer"},
        )
    if not any(secrets.compare_digest(presented, key) for key in allowed):
        raise APIError(401, "unauthorized", "The API key is not valid.", {"WWW-Authenticate": "Bearer"})
