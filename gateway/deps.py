"""Request dependencies: the app's shared objects, the optional API-key check and the operator-key check."""

from __future__ import annotations

import secrets

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from gateway.answer_cache import AnswerCache
from gateway.canary import Canaries
from gateway.capture.worker import Capturer
from gateway.drift import DriftMonitor
from gateway.errors import APIError
from gateway.limits import PendingPredictions, TokenBuckets, client_address, rate_limited
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.state import StateStore
from gateway.upstream import Upstream

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when GATEWAY_API_KEYS is set")
admin_key_header = APIKeyHeader(
    name="X-Admin-Key", auto_error=False, description="an operator key from GATEWAY_ADMIN_KEYS", scheme_name="AdminKey"
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_upstream(request: Request) -> Upstream:
    return request.app.state.upstream


def get_answer_cache(request: Request) -> AnswerCache | None:
    """The answer cache, or None when it is off (``GATEWAY_ANSWER_CACHE``)."""
    return request.app.state.answer_cache


def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def get_canaries(request: Request) -> Canaries:
    return request.app.state.canaries


def get_drift(request: Request) -> DriftMonitor:
    return request.app.state.drift


def get_capturer(request: Request) -> Capturer:
    return request.app.state.capturer


def get_store(request: Request) -> StateStore:
    return request.app.state.store


def get_pending(request: Request) -> PendingPredictions:
    return request.app.state.pending


def _known(presented: str, allowed: frozenset[str]) -> bool:
    """Constant-time against every configured key, so the answer's timing says nothing about a key."""
    return any(secrets.compare_digest(presented, key) for key in allowed)


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
    if not _known(presented, allowed):
        raise APIError(401, "unauthorized", "The API key is not valid.", {"WWW-Authenticate": "Bearer"})
    request.state.api_key = presented


async def limit_rate(request: Request) -> None:
    """One token of this client's bucket per request, taken after ``require_api_key`` and before the body is read.

    A refused request costs its headers only.
    """
    spend_tokens(request, 1)


def spend_tokens(request: Request, tokens: int) -> None:
    """Spend ``tokens`` of this client's bucket (its API key's, or its address's when keys are off), else 429.

    The key or address names a bucket in memory, never a metric label.
    """
    buckets: TokenBuckets | None = request.app.state.rate_buckets
    if buckets is None or tokens <= 0:
        return
    key = getattr(request.state, "api_key", None)
    if key is not None:
        identity, who = f"key {key}", "This API key"
    else:
        address = client_address(request.scope, get_settings(request).trusted_proxy_networks)
        identity, who = f"address {address}", f"Address {address}"
    wait_s = buckets.take(identity, tokens)
    if wait_s:
        get_metrics(request).cut_uploads.labels("rate_limited").inc()
        raise rate_limited(wait_s, buckets.rate, buckets.burst, who)


async def require_admin_key(request: Request, admin_key: str | None = Security(admin_key_header)) -> None:
    """Every route that changes state needs an operator key, separate from the API keys.

    403 when the gateway has none configured (its state cannot be changed over HTTP at all),
    401 when the key is missing or wrong.
    """
    allowed = get_settings(request).admin_key_set
    if not allowed:
        raise APIError(
            403,
            "admin_disabled",
            "This gateway has no operator keys: set GATEWAY_ADMIN_KEYS to change its state over HTTP.",
        )
    if not admin_key:
        raise APIError(401, "unauthorized", "An operator key is required: send it in the X-Admin-Key header.")
    if not _known(admin_key, allowed):
        raise APIError(401, "unauthorized", "The operator key is not valid.")
