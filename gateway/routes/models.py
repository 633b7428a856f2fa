"""``GET /models``: the loaded versions and the default, read through the management API."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from gateway.deps import get_settings, get_upstream
from gateway.routes.health import ready_count
from gateway.schemas import ErrorResponse, ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsResponse, responses={503: {"model": ErrorResponse}})
async def models(request: Request) -> dict:
    """Read-only: the management key stays on the server side. Each version's handler reports its task."""
    upstream = get_upstream(request)
    default = await upstream.describe()
    every = await upstream.describe(all_versions=True)
    default_version = default[0].get("modelVersion") if default else None
    metadata = await asyncio.gather(*(upstream.handler_metadata(entry.get("modelVersion")) for entry in every))
    by_version = {entry.get("modelVersion"): meta for entry, meta in zip(every, metadata, strict=True)}
    versions = [
        {
            "version": entry.get("modelVersion"),
            "task": by_version[entry.get("modelVersion")].get("task"),
            "is_default": entry.get("modelVersion") == default_version,
            "workers_ready": ready_count([entry]),
            "workers_total": len(entry.get("workers", [])),
            "batch_size": entry.get("batchSize"),
            "max_batch_delay_ms": entry.get("maxBatchDelay"),
        }
        for entry in every
    ]
    versions.sort(key=lambda v: [int(p) for p in v["version"].split(".")])
    served = by_version.get(default_version, {})
    return {
        "model": get_settings(request).model_name,
        "default_version": default_version,
        "task": served.get("task"),
        "classes": served.get("classes"),
        "versions": versions,
    }
