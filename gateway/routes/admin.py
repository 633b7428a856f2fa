"""``/admin``: the operator's routes, the ones that change the gateway's state.

Every route here needs an operator key (``X-Admin-Key``, one of ``GATEWAY_ADMIN_KEYS``): 403
when the gateway has none, 401 when it is missing or wrong. A canary is started only by
``scripts/deploy.sh VERSION --canary PERCENT``, which gates the version first; here an operator
reads it, changes its share or stops it, and reads the model's deploy history. Each change is
recorded in that history.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from gateway.canary import Canary
from gateway.deps import get_canaries, get_store, require_admin_key
from gateway.errors import APIError
from gateway.routes.predict import ModelName
from gateway.schemas import CanaryShare, CanaryState, ErrorResponse, HistoryResponse
from gateway.state import history_entry, history_log

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
    responses={
        401: {"model": ErrorResponse, "description": "operator key missing or wrong"},
        403: {"model": ErrorResponse, "description": "no operator keys configured (GATEWAY_ADMIN_KEYS)"},
    },
)
WHO = "gateway-admin"


def _state(model: str, canary: Canary | None, stopped: str | None = None) -> dict:
    return {"model": model, "canary": canary.stored() if canary else None, "stopped": stopped}


@router.get("/models/{model}/canary", response_model=CanaryState)
async def read_canary(request: Request, model: ModelName) -> dict:
    """The model's running canary, or null."""
    return _state(model, get_canaries(request).current(model))


@router.put(
    "/models/{model}/canary",
    response_model=CanaryState,
    responses={409: {"model": ErrorResponse, "description": "no canary is running for the model"}},
)
async def change_canary_share(request: Request, model: ModelName, share: CanaryShare) -> dict:
    """Change the running canary's share of unpinned predictions (start one with scripts/deploy.sh: it gates first)."""
    canaries = get_canaries(request)
    running = canaries.current(model)
    if running is None:
        raise APIError(
            409,
            "no_canary",
            f"no canary is running for {model!r}; start one with scripts/deploy.sh --model {model} VERSION "
            "--canary PERCENT, which gates the version first",
        )
    changed = Canary(running.version, share.percent)
    canaries.set(model, changed)
    entry = history_entry("canary-share", running.version, None, WHO, percent=share.percent, was=running.percent)
    get_store(request).append(history_log(model), entry)
    return _state(model, changed)


@router.delete("/models/{model}/canary", response_model=CanaryState)
async def stop_canary(request: Request, model: ModelName) -> dict:
    """Send every unpinned prediction to the default version again; the canary version stays loaded."""
    canaries = get_canaries(request)
    running = canaries.current(model)
    if running is None:
        return _state(model, None)
    canaries.set(model, None)
    get_store(request).append(history_log(model), history_entry("canary-stop", running.version, None, WHO))
    return _state(model, None, stopped=running.version)


@router.get("/models/{model}/history", response_model=HistoryResponse)
async def deploy_history(request: Request, model: ModelName) -> dict:
    """The model's deploy history, oldest first: who deployed, promoted or rolled back what, and when."""
    return {"model": model, "entries": get_store(request).entries(history_log(model))}
