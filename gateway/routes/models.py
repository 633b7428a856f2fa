"""``GET /models`` and ``GET /models/{model}``: what TorchServe serves, read through the management API.

Read-only: the management key stays on the server side. Each version's handler reports its
task and classes, so a client can tell a detector from a classifier before it sends a picture.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from gateway.capture.worker import Capturer
from gateway.deps import get_capturer, get_drift, get_settings, get_upstream
from gateway.drift import DriftMonitor
from gateway.routes.predict import ModelName
from gateway.schemas import ErrorResponse, ModelInfo, ModelsResponse
from gateway.torchserve import ready_count
from gateway.upstream import Upstream
from serving.yolo_contract import version_order

router = APIRouter(tags=["models"])


async def model_info(
    upstream: Upstream, model: str, default_model: str, monitor: DriftMonitor, capturer: Capturer
) -> dict:
    """One model: its versions with their workers, task and drift reference, the default version's classes and
    the capture policy."""
    default, every = await asyncio.gather(upstream.describe(model), upstream.describe(model, all_versions=True))
    default_version = default[0].get("modelVersion") if default else None
    metadata = await asyncio.gather(*(upstream.handler_metadata(model, entry.get("modelVersion")) for entry in every))
    by_version = {entry.get("modelVersion"): meta for entry, meta in zip(every, metadata, strict=True)}
    watches = await asyncio.gather(*(monitor.watch(model, entry.get("modelVersion")) for entry in every))
    references = {watch.version: watch.reference_summary() for watch in watches}
    versions = [
        {
            "version": entry.get("modelVersion"),
            "task": by_version[entry.get("modelVersion")].get("task"),
            "is_default": entry.get("modelVersion") == default_version,
            "workers_ready": ready_count([entry]),
            "workers_total": len(entry.get("workers", [])),
            "batch_size": entry.get("batchSize"),
            "max_batch_delay_ms": entry.get("maxBatchDelay"),
            "drift_reference": references.get(entry.get("modelVersion")),
        }
        for entry in every
    ]
    versions.sort(key=lambda v: version_order(v["version"]))
    served = by_version.get(default_version, {})
    return {
        "name": model,
        "serves_predict": model == default_model,
        "default_version": default_version,
        "task": served.get("task"),
        "classes": served.get("classes"),
        "versions": versions,
        "capture": await capturer.info(model),
    }


@router.get("/models", response_model=ModelsResponse, responses={503: {"model": ErrorResponse}})
async def models(request: Request) -> dict:
    """Every model TorchServe serves, with its versions, task, classes and ready workers."""
    upstream, default_model = get_upstream(request), get_settings(request).default_model
    names = await upstream.model_names()
    monitor, capturer = get_drift(request), get_capturer(request)
    described = await asyncio.gather(*(model_info(upstream, name, default_model, monitor, capturer) for name in names))
    return {"default_model": default_model, "models": described}


@router.get(
    "/models/{model}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorResponse, "description": "no such model"}, 503: {"model": ErrorResponse}},
)
async def one_model(request: Request, model: ModelName) -> dict:
    """One model's versions, task, classes and ready workers; an unknown name is a 404 naming the served ones."""
    upstream, default_model = get_upstream(request), get_settings(request).default_model
    return await model_info(upstream, model, default_model, get_drift(request), get_capturer(request))
