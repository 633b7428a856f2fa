"""``/models/{model}/captures``: the images a capture policy kept, for the operator who labels them.

Every route needs an operator key: captures are production images. ``GET`` lists (filtered,
newest first) or returns one (its row, or with ``?image=true`` its bytes as uploaded);
``DELETE`` purges one by id or every capture older than some days, images included, and says
so in the model's deploy history.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from gateway.capture.store import CaptureStore
from gateway.deps import get_store, require_admin_key
from gateway.errors import APIError
from gateway.routes.predict import ModelName
from gateway.schemas import Capture, CaptureList, CapturePurge, ErrorResponse
from gateway.state import history_entry, history_log
from serving.yolo_contract import VERSION_PATTERN

router = APIRouter(
    tags=["captures"],
    dependencies=[Depends(require_admin_key)],
    responses={
        401: {"model": ErrorResponse, "description": "operator key missing or wrong"},
        403: {"model": ErrorResponse, "description": "no operator keys configured (GATEWAY_ADMIN_KEYS)"},
    },
)
CaptureId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="a capture's id (16 hex digits)")]
WHO = "gateway-admin"


def get_captures(request: Request) -> CaptureStore:
    return request.app.state.capture_store


@router.get("/models/{model}/captures", response_model=CaptureList)
async def list_captures(
    request: Request,
    model: ModelName,
    reason: Annotated[str | None, Query(max_length=80, description="only captures with this reason")] = None,
    version: Annotated[str | None, Query(pattern=VERSION_PATTERN, description="only this version's")] = None,
    since: Annotated[float | None, Query(description="only captures at or after this time (epoch s)")] = None,
    until: Annotated[float | None, Query(description="only captures before this time (epoch s)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    """The model's captures, newest first, filtered by reason (``class:dent`` or ``class``), version and time."""
    rows = await asyncio.to_thread(get_captures(request).rows, model)
    chosen = [
        row
        for row in reversed(rows)
        if (reason is None or reason in row["reasons"] or reason in {r.partition(":")[0] for r in row["reasons"]})
        and (version is None or row["version"] == version)
        and (since is None or row["time"] >= since)
        and (until is None or row["time"] < until)
    ]
    return {"model": model, "total": len(chosen), "captures": chosen[offset : offset + limit]}


@router.get(
    "/models/{model}/captures/{capture_id}",
    response_model=Capture,
    responses={
        200: {"content": {"image/*": {}}, "description": "the capture's row, or with image=true its image"},
        404: {"model": ErrorResponse, "description": "no such capture"},
    },
)
async def one_capture(
    request: Request,
    model: ModelName,
    capture_id: CaptureId,
    image: Annotated[bool, Query(description="the image's bytes, as uploaded, instead of the row")] = False,
) -> Response | dict:
    store = get_captures(request)
    row = await asyncio.to_thread(store.get, model, capture_id)
    if row is None:
        raise APIError(404, "capture_not_found", f"{model} has no capture {capture_id} (GET /models/{model}/captures)")
    if not image:
        return row
    try:
        data = await asyncio.to_thread(store.read, row)
    except FileNotFoundError:
        raise APIError(404, "capture_not_found", f"the image of capture {capture_id} is gone from the disk") from None
    return Response(data, media_type=row["media_type"])


@router.delete(
    "/models/{model}/captures/{capture_id}",
    response_model=CapturePurge,
    responses={404: {"model": ErrorResponse, "description": "no such capture"}},
)
async def delete_capture(request: Request, model: ModelName, capture_id: CaptureId) -> dict:
    """Delete one capture and its image."""
    purged = await asyncio.to_thread(get_captures(request).purge, model, [capture_id])
    if not purged:
        raise APIError(404, "capture_not_found", f"{model} has no capture {capture_id}")
    return _purged(request, model, purged, f"id {capture_id}")


@router.delete(
    "/models/{model}/captures",
    response_model=CapturePurge,
    responses={422: {"model": ErrorResponse, "description": "older_than_days missing or not positive"}},
)
async def purge_captures(
    request: Request,
    model: ModelName,
    older_than_days: Annotated[float, Query(ge=0, description="delete every capture older than this (0: all)")],
) -> dict:
    """Delete every capture older than ``older_than_days`` (``0`` deletes them all), images included."""
    before = time.time() - older_than_days * 86400
    purged = await asyncio.to_thread(get_captures(request).purge, model, None, before)
    return _purged(request, model, purged, f"older than {older_than_days:g} days")


def _purged(request: Request, model: str, purged: list[str], what: str) -> dict:
    entry = history_entry("captures-purged", "-", None, WHO, captures=len(purged), which=what)
    get_store(request).append(history_log(model), entry)
    return {"model": model, "purged": purged}
