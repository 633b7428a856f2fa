"""Predictions: multipart in, TorchServe predictions out, for any model TorchServe serves.

``/models/{model}/predict`` and ``/models/{model}/predict/batch`` reach a model by name;
``/predict`` and ``/predict/batch`` are the same routes for the default model
(``GATEWAY_DEFAULT_MODEL``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Literal, NamedTuple

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from gateway.annotate import annotate
from gateway.answer_cache import AnswerCache, Entry, Lookup
from gateway.deps import (
    get_answer_cache,
    get_canaries,
    get_capturer,
    get_drift,
    get_metrics,
    get_pending,
    get_settings,
    get_upstream,
    limit_rate,
    require_api_key,
    spend_tokens,
)
from gateway.errors import APIError
from gateway.schemas import BatchResponse, ErrorResponse, PredictResponse
from gateway.uploads import UploadedFile, read_files
from gateway.upstream import UNKNOWN_MODEL
from serving.yolo_contract import (
    CLASSES_PATTERN,
    MASK_FORMATS,
    MAX_DET_LIMIT,
    NAME_PATTERN,
    TOP_K_LIMIT,
    VERSION_PATTERN,
    error_body,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key), Depends(limit_rate)])

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="a model TorchServe serves (GET /models)")]
ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "missing/empty file, unknown form field, not multipart, unknown class",
        401: "API key missing or wrong (when GATEWAY_API_KEYS is set)",
        404: "no such model (the answer names the served ones), or the pinned version is not loaded",
        408: "the body arrived too slowly (body_too_slow) or not within the deadline (body_timeout)",
        413: "upload or image too large",
        415: "not a decodable image",
        422: "bad query parameter, or one the model's task does not take (e.g. top_k on a detector)",
        429: "over this client's rate (rate_limited), or too many slow uploads from its address (with Retry-After)",
        503: "the gateway's predictions waiting for TorchServe at their limit (busy), TorchServe down, no ready "
        "worker or queue full (with Retry-After)",
        504: "TorchServe did not answer in time",
    }.items()
}


def multipart_body(field: str, many: bool) -> dict:
    """OpenAPI request body for the streamed multipart upload the route parses itself."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else binary
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [field], "properties": {field: schema}}
                }
            },
        }
    }


class InferenceParams(BaseModel):
    """Post-processing overrides; anything left out uses the archive's defaults."""

    model_config = {"extra": "forbid"}

    conf: float | None = Field(None, ge=0, le=1, description="confidence threshold")
    iou: float | None = Field(None, ge=0, le=1, description="NMS IoU threshold")
    max_det: int | None = Field(None, ge=1, le=MAX_DET_LIMIT, description="most detections per image")
    classes: str | None = Field(
        None, pattern=CLASSES_PATTERN, description="class names or ids to keep, comma-separated"
    )
    masks: Literal[MASK_FORMATS] | None = Field(
        None, description="segment: polygon outlines (default), or also each full-resolution mask as COCO RLE"
    )
    top_k: int | None = Field(
        None, ge=1, le=TOP_K_LIMIT, description="classify: how many classes to return (default 5)"
    )
    version: str | None = Field(None, pattern=VERSION_PATTERN, description="pin a model version, e.g. 1.0")
    signals: bool = Field(False, description="also return the drift signals the gateway watches for this image")

    def upstream_headers(self) -> dict[str, str]:
        """Only what the client set: the handler refuses a parameter its model's task has no use for (422)."""
        values = {
            "Conf": self.conf,
            "Iou": self.iou,
            "Max-Det": self.max_det,
            "Classes": self.classes,
            "Masks": self.masks,
            "Top-K": self.top_k,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


class PredictParams(InferenceParams):
    format: Literal["json", "image"] = Field("json", description="json, or image for an annotated JPEG")


class Answer(NamedTuple):
    status: int
    body: dict
    cache: str | None  # X-Answer-Cache: hit or miss; None when the cache is off


async def predict_one(request: Request, model: str, data: bytes, params: InferenceParams) -> Answer:
    """Answer one image with ``model`` (the pinned version, else its canary's share or its default):
    from the answer cache when it holds this exact request, else from TorchServe."""
    get_metrics(request).upload_bytes.observe(len(data))
    started = time.perf_counter()
    version = params.version or get_canaries(request).pick(model)
    cache = get_answer_cache(request)
    if cache is None:
        return Answer(*await ask_torchserve(request, model, data, params, version, started), None)
    lookup = await cache.find(model, version, data, params.upstream_headers(), get_upstream(request).default_version)
    if lookup.entry is not None:
        status, body = 200, await cached_answer(request, lookup.entry, params, started)
    else:
        status, body = await ask_torchserve(request, model, data, params, version, started, cache, lookup)
    if (body.get("error") or {}).get("code") != UNKNOWN_MODEL:
        cache.count(lookup)
    return Answer(status, body, lookup.header)


async def ask_torchserve(
    request: Request,
    model: str,
    data: bytes,
    params: InferenceParams,
    version: str | None,
    started: float,
    cache: AnswerCache | None = None,
    lookup: Lookup | None = None,
) -> tuple[int, dict]:
    """Forward one image to TorchServe; a success feeds the drift watch and the capture, and is kept in
    the answer cache when there is one. Returns the status and body to answer with."""
    metrics = get_metrics(request)
    try:
        result = await get_upstream(request).predict(model, data, version, params.upstream_headers())
    except APIError as exc:
        if exc.status >= 500 and exc.code != UNKNOWN_MODEL:
            metrics.prediction_errors.labels(model, version or "default", exc.code).inc()
        return exc.status, error_body(exc.code, exc.message)
    body = result.body
    if result.status == 200 and body.get("status") == "success":
        metrics.record_prediction(body, result.upstream_ms / 1000)
        signals = body.pop("signals", None)
        if cache is not None:
            await cache.keep(lookup, body["model"]["version"], Entry(body, signals, result.upstream_ms))
        if signals is not None:
            await watch_drift(request, body["model"], signals)
        await capture(request, data, params, body, signals)
        if signals is not None and params.signals:
            body["signals"] = signals
        body["timing_ms"] = {
            **body.get("timing_ms", {}),
            "upstream": round(result.upstream_ms, 2),
            "total": round((time.perf_counter() - started) * 1000, 2),
        }
    elif result.status >= 500:
        code = (body.get("error") or {}).get("code") or f"http_{result.status}"
        metrics.prediction_errors.labels(model, version or "default", code).inc()
    return result.status, body


async def cached_answer(request: Request, entry: Entry, params: InferenceParams, started: float) -> dict:
    """The stored answer as this request's: its drift signals feed the watch as a miss's would (the drift
    watch sees the traffic as it is, repeats included); no capture (an exact duplicate of a kept answer's
    request); no TorchServe stage ran, so every stage's time is 0 and the total is this request's own."""
    body = entry.body  # parsed from the stored text for this request: ours to change
    if entry.signals is not None:
        await watch_drift(request, body["model"], entry.signals)
        if params.signals:
            body["signals"] = entry.signals
    body["timing_ms"] = {
        **{stage: 0.0 for stage in body.get("timing_ms", {})},
        "upstream": 0.0,
        "total": round((time.perf_counter() - started) * 1000, 2),
    }
    return body


async def watch_drift(request: Request, answered: dict, signals: dict) -> None:
    """Feed the answering version's drift detectors; a failure there never fails the prediction."""
    try:
        await get_drift(request).observe(answered["name"], answered["version"], signals)
    except Exception:  # noqa: BLE001 - the answer is good whatever the watch thinks; the next request tries again
        logger.exception("drift watch of %s v%s failed", answered.get("name"), answered.get("version"))


async def capture(request: Request, data: bytes, params: InferenceParams, body: dict, signals: dict | None) -> None:
    """Offer the answer to the model's capture policy; the decision is quick, the storing is off the request path."""
    capturer = get_capturer(request)
    model, version = body["model"]["name"], body["model"]["version"]
    if model not in capturer.policies:
        return
    try:
        conf = await capturer.default_conf(model, version, get_upstream(request).handler_metadata)
        watch = get_drift(request).watches.get((model, version))
        given = params.model_dump(exclude_none=True, exclude={"signals", "format"})
        request_id = getattr(request.state, "request_id", "")
        capturer.offer(request_id, data, given, body, signals, conf, bool(watch and watch.alarms))
    except Exception:  # noqa: BLE001 - the answer is good whatever the capture thinks
        logger.exception("capture of %s v%s failed", model, version)
        capturer.drop(model, "store_error")


PREDICT_DOC = {
    "response_model": PredictResponse,
    "responses": {
        **ERRORS,
        200: {"content": {"image/jpeg": {}}, "description": "the prediction (or an annotated JPEG)"},
    },
    "openapi_extra": multipart_body("file", many=False),
}
BATCH_DOC = {"response_model": BatchResponse, "responses": ERRORS, "openapi_extra": multipart_body("files", many=True)}


@router.post("/models/{model}/predict", summary="Predict with the named model on one image", **PREDICT_DOC)
async def predict_with(request: Request, model: ModelName, params: Annotated[PredictParams, Query()]) -> Response:
    return await _predict(request, model, params)


@router.post("/predict", summary="Predict with the default model on one image", **PREDICT_DOC)
async def predict(request: Request, params: Annotated[PredictParams, Query()]) -> Response:
    return await _predict(request, get_settings(request).default_model, params)


@router.post("/models/{model}/predict/batch", summary="Predict with the named model on several images", **BATCH_DOC)
async def predict_batch_with(
    request: Request, model: ModelName, params: Annotated[InferenceParams, Query()]
) -> JSONResponse:
    return await _predict_batch(request, model, params)


@router.post("/predict/batch", summary="Predict with the default model on several images", **BATCH_DOC)
async def predict_batch(request: Request, params: Annotated[InferenceParams, Query()]) -> JSONResponse:
    return await _predict_batch(request, get_settings(request).default_model, params)


async def _read(request: Request, field: str, max_files: int) -> list[UploadedFile]:
    settings = get_settings(request)
    return await read_files(
        request,
        frozenset({field}),
        settings.max_upload_bytes,
        max_files,
        settings.upload_buffer_bytes,
        settings.spool_dir,
    )


async def _predict(request: Request, model: str, params: PredictParams) -> Response:
    settings = get_settings(request)
    (upload,) = await _read(request, "file", max_files=1)
    with get_pending(request).hold():
        status, body, cached = await predict_one(request, model, upload.data, params)
    cache_header = {"X-Answer-Cache": cached} if cached else {}
    if status != 200:
        headers = {**_retry_after(status, settings.retry_after_s), **cache_header}
        return JSONResponse(body, status_code=status, headers=headers)
    headers = {"X-Model-Version": body["model"]["version"], **cache_header}
    if params.format == "image":
        return Response(annotate(upload.data, body), media_type="image/jpeg", headers=headers)
    return JSONResponse(body, headers=headers)


async def _predict_batch(request: Request, model: str, params: InferenceParams) -> JSONResponse:
    """Every image is sent to TorchServe at once, so its batching can group them; each is looked up in the
    answer cache on its own (``X-Answer-Cache`` lists hit or miss per image, in request order)."""
    uploads = await _read(request, "files", get_settings(request).max_batch_files)
    spend_tokens(request, len(uploads) - 1)  # one token an image: the request itself took the first
    with get_pending(request).hold():
        answers = await asyncio.gather(*(predict_one(request, model, upload.data, params) for upload in uploads))
    unknown = next((a.body for a in answers if a.body.get("error", {}).get("code") == UNKNOWN_MODEL), None)
    if unknown is not None:
        return JSONResponse(unknown, status_code=404)
    results = [
        _batch_item(i, upload, answer.status, answer.body)
        for i, (upload, answer) in enumerate(zip(uploads, answers, strict=True))
    ]
    cached = [answer.cache for answer in answers if answer.cache]
    headers = {"X-Answer-Cache": ", ".join(cached)} if cached else {}
    return JSONResponse({"status": "success", "results": results}, headers=headers)


def _batch_item(index: int, upload: UploadedFile, status: int, body: dict) -> dict:
    return {"index": index, "filename": upload.filename, "http_status": status, **body}


def _retry_after(status: int, seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)} if status == 503 else {}
