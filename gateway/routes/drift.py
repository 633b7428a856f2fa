"""``/models/{model}/drift``: what each loaded version's drift detectors say, and the operator's two remedies.

Reading is open like ``GET /models``. ``reset`` (after a fix on the line: clear the sums, counts
and alarms, keep the reference) and ``rebaseline`` (the line changed for good: the last N
requests' signals become the version's reference, kept in the state store, never in the
archive) need an operator key and are written to the model's deploy history.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from gateway.deps import get_drift, get_store, get_upstream, require_admin_key
from gateway.drift import MIN_REBASELINE, Watch
from gateway.errors import APIError
from gateway.routes.predict import ModelName
from gateway.schemas import DriftResponse, ErrorResponse
from gateway.state import history_entry, history_log
from serving.yolo_contract import VERSION_PATTERN, version_order

router = APIRouter(tags=["drift"])
WHO = "gateway-admin"
ADMIN = {
    "dependencies": [Depends(require_admin_key)],
    "response_model": DriftResponse,
    "responses": {
        401: {"model": ErrorResponse, "description": "operator key missing or wrong"},
        403: {"model": ErrorResponse, "description": "no operator keys configured (GATEWAY_ADMIN_KEYS)"},
        404: {"model": ErrorResponse, "description": "no such model or version"},
    },
}
Version = Annotated[
    str | None, Query(pattern=VERSION_PATTERN, description="one version (default: every loaded version)")
]


async def loaded_versions(request: Request, model: str) -> list[str]:
    """The model's loaded versions, oldest first; 404 naming the served models for an unknown name."""
    described = await get_upstream(request).describe(model, all_versions=True)
    return sorted({entry.get("modelVersion") for entry in described}, key=version_order)


async def watches(request: Request, model: str, version: str | None = None) -> list[Watch]:
    versions = await loaded_versions(request, model)
    if version is not None and version not in versions:
        raise APIError(
            404, "model_not_found", f"version {version} of {model!r} is not loaded; loaded: {', '.join(versions)}"
        )
    monitor = get_drift(request)
    return list(await asyncio.gather(*(monitor.watch(model, v) for v in ([version] if version else versions))))


def report(model: str, found: list[Watch]) -> dict:
    return {"model": model, "versions": [watch.report() for watch in found]}


@router.get(
    "/models/{model}/drift",
    response_model=DriftResponse,
    responses={404: {"model": ErrorResponse, "description": "no such model"}, 503: {"model": ErrorResponse}},
)
async def read_drift(request: Request, model: ModelName) -> dict:
    """Each loaded version's drift state (ok, warning, critical, no_reference), signals and alarms."""
    return report(model, await watches(request, model))


@router.post("/models/{model}/drift/reset", **ADMIN)
async def reset_drift(request: Request, model: ModelName, version: Version = None) -> dict:
    """Clear the detectors' sums, counts and alarms (every loaded version, or one); the references stay."""
    found = await watches(request, model, version)
    for watch in found:
        get_drift(request).reset(watch)
        entry = history_entry("drift-reset", watch.version, None, WHO)
        get_store(request).append(history_log(model), entry)
    return report(model, found)


@router.post(
    "/models/{model}/drift/rebaseline",
    **{**ADMIN, "responses": {**ADMIN["responses"], 409: {"model": ErrorResponse, "description": "too few requests"}}},
)
async def rebaseline_drift(
    request: Request,
    model: ModelName,
    version: Version = None,
    last: Annotated[int, Query(ge=MIN_REBASELINE, description="how many of the newest requests to take")] = 2000,
) -> dict:
    """Make the last ``last`` requests' signals the version's reference (default version unless ``version``)."""
    if version is None:
        (default,) = await get_upstream(request).describe(model)
        version = default.get("modelVersion")
    (watch,) = await watches(request, model, version)
    if len(watch.recent) < last:
        raise APIError(
            409,
            "too_few_requests",
            f"{model} v{version} has the signals of {len(watch.recent)} recent requests in this gateway, {last} "
            f"asked for; send more traffic or ask for fewer (at least {MIN_REBASELINE})",
        )
    fresh = await get_drift(request).rebaseline(watch, last)
    entry = history_entry("drift-rebaseline", version, None, WHO, requests=last)
    get_store(request).append(history_log(model), entry)
    return report(model, [fresh])
