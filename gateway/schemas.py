"""Typed request and response models: they are what ``/docs`` shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gateway.capture.policy import CapturePolicy
from serving.yolo_contract import TASKS


class ModelRef(BaseModel):
    name: str = Field(examples=["yolo"])
    version: str = Field(examples=["1.0"])


class ImageSize(BaseModel):
    width: int = Field(gt=0, examples=[1280])
    height: int = Field(gt=0, examples=[720])


Task = Literal[TASKS]
Point = list[float]


class Keypoint(BaseModel):
    name: str = Field(examples=["tip"], description="from the model's kpt_names, else the keypoint's index")
    x: float
    y: float
    confidence: float | None = Field(None, description="visibility score; null for models without one")


class RotatedBox(BaseModel):
    cx: float
    cy: float
    w: float
    h: float
    angle: float = Field(description="radians, Ultralytics' xywhr convention")


class RLE(BaseModel):
    size: list[int] = Field(min_length=2, max_length=2, description="height, width")
    counts: list[int] = Field(description="COCO uncompressed RLE: column-major run lengths, zeros first")


class Detection(BaseModel):
    class_name: str = Field(alias="class", examples=["scratch"])
    class_id: int = Field(ge=0, examples=[0])
    confidence: float = Field(ge=0, le=1, examples=[0.91])
    bbox: list[float] = Field(
        min_length=4,
        max_length=4,
        description="x1, y1, x2, y2 in pixels of the upright original image (obb: the box around the corners)",
    )
    polygons: list[list[Point]] | None = Field(None, description="segment: mask outlines, [[x, y], ...] each")
    rle: RLE | None = Field(None, description="segment with masks=rle: the full-resolution mask")
    keypoints: list[Keypoint] | None = Field(None, description="pose")
    obb: RotatedBox | None = Field(None, description="obb: the rotated box")
    corners: list[Point] | None = Field(None, description="obb: the rotated box's 4 corners")

    model_config = {"populate_by_name": True}


class Classification(BaseModel):
    class_name: str = Field(alias="class", examples=["cracked"])
    class_id: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)

    model_config = {"populate_by_name": True}


class Timing(BaseModel):
    total: float = Field(description="time spent in the gateway for this request, ms")
    upstream: float = Field(description="round trip to TorchServe, ms")
    preprocess: float = Field(0.0, description="decode and letterbox in the handler, ms")
    inference: float = Field(description="model forward pass (of the whole TorchServe batch), ms")
    postprocess: float = Field(0.0, description="NMS and box mapping in the handler, ms")


class PredictResponse(BaseModel):
    status: Literal["success"] = "success"
    task: Task = Field(description="the model's task: which of detections / classifications is present")
    model: ModelRef
    image: ImageSize
    detections: list[Detection] | None = Field(None, description="all tasks but classify; best first")
    classifications: list[Classification] | None = Field(None, description="classify: the top-k classes, best first")
    signals: dict[str, float | None] | None = Field(None, description="the drift signals, only with ?signals=true")
    timing_ms: Timing


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["The file is not a decodable image."])


class ErrorResponse(BaseModel):
    status: Literal["error"] = "error"
    error: ErrorDetail


class BatchItem(BaseModel):
    index: int = Field(ge=0, description="position of the file in the request")
    filename: str | None = None
    http_status: int = Field(description="what /predict would have answered for this file alone")
    status: Literal["success", "error"]
    task: Task | None = None
    model: ModelRef | None = None
    image: ImageSize | None = None
    detections: list[Detection] | None = None
    classifications: list[Classification] | None = None
    signals: dict[str, float | None] | None = None
    timing_ms: Timing | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    status: Literal["success"] = "success"
    results: list[BatchItem] = Field(description="one entry per uploaded file, in request order")


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable", "draining"] = Field(
        description="whether the default model can answer; draining: shutting down, still answering what it has"
    )
    model: str = Field(description="the default model (the one /predict serves)")
    version: str | None = None
    workers_ready: int = 0
    reason: str | None = None
    models: dict[str, int] | None = Field(None, description="READY workers of every served model's default version")


class DriftReferenceInfo(BaseModel):
    images: int = Field(description="reference images (half fit the reference, half calibrate the threshold)")
    source: Literal["archive", "rebaseline"] = Field(description="packaged with the archive, or taken from traffic")
    target_ert: int = Field(description="requests between false alarms asked for (GATEWAY_DRIFT_TARGET_ERT)")
    predicted_ert: int = Field(description="what the calibration predicts the threshold in use gives")


class ModelVersion(BaseModel):
    version: str
    task: Task | None = Field(None, description="as the version's handler reports it")
    is_default: bool
    workers_ready: int
    workers_total: int
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    drift_reference: DriftReferenceInfo | None = Field(None, description="null: no reference, no drift watch")


class CaptureInfo(BaseModel):
    policy: CapturePolicy = Field(description="what of this model's traffic is kept (GATEWAY_CAPTURE_POLICY)")
    stored: int = Field(description="captures kept")
    bytes: int = Field(description="bytes of captured images kept")


class ModelInfo(BaseModel):
    name: str = Field(examples=["yolo"], description="predict with it at /models/{name}/predict")
    serves_predict: bool = Field(description="whether /predict (without a model name) reaches this model")
    default_version: str | None
    task: Task | None = Field(None, description="the default version's task")
    classes: dict[int, str] | None = Field(None, description="the default version's class names by id")
    versions: list[ModelVersion]
    capture: CaptureInfo | None = Field(None, description="null: this model's traffic is not captured")


class ModelsResponse(BaseModel):
    default_model: str = Field(description="the model /predict and /predict/batch serve")
    models: list[ModelInfo]


class CanaryShare(BaseModel):
    model_config = {"extra": "forbid"}

    percent: float = Field(gt=0, lt=100, description="share of the model's unpinned predictions the canary gets, %")


class CanaryInfo(BaseModel):
    version: str
    percent: float


class CanaryState(BaseModel):
    model: str
    canary: CanaryInfo | None = Field(description="the running canary; null when every prediction goes to the default")
    stopped: str | None = Field(None, description="DELETE: the canary version this call stopped, if one ran")


class HistoryEntry(BaseModel):
    model_config = {"extra": "allow"}

    when: str
    who: str
    action: str = Field(examples=["deploy"], description="deploy, canary, promote, rollback, refused, canary-share...")
    version: str
    previous: str | None
    sha256: str | None
    result: str = Field(examples=["ok"])


class HistoryResponse(BaseModel):
    model: str
    entries: list[HistoryEntry] = Field(description="oldest first")


class DriftSignal(BaseModel):
    name: str = Field(examples=["sharpness"])
    tier: Literal["input", "output"] = Field(
        description="input: the pictures (warning); output: the answers (critical)"
    )
    statistic: float = Field(description="the signal's CUSUM statistic; it alarms above the threshold")
    threshold: float


class DriftAlarm(BaseModel):
    signal: str
    tier: Literal["input", "output"]
    at_request: int = Field(description="the version's request count (since its last reset) that raised it")
    time: str = Field(description="ISO 8601")


class DriftVersion(BaseModel):
    version: str
    state: Literal["ok", "warning", "critical", "no_reference"]
    requests: int = Field(description="predictions watched since the last reset")
    reference: DriftReferenceInfo | None
    signals: list[DriftSignal]
    alarms: list[DriftAlarm] = Field(description="the newest 100, oldest first; each names one signal")


class DriftResponse(BaseModel):
    model: str
    versions: list[DriftVersion]


class Capture(BaseModel):
    model_config = {"extra": "allow"}

    id: str = Field(description="the capture's id (time-ordered)")
    request_id: str = Field(description="the request's X-Request-ID")
    model: str
    version: str = Field(description="the version that answered")
    sha256: str = Field(description="of the image's bytes, as uploaded")
    size: int
    media_type: str
    width: int
    height: int
    params: dict = Field(description="the request's query parameters")
    answer: dict = Field(description="what the model answered")
    signals: dict | None = Field(description="the drift signals of the answer")
    reasons: list[str] = Field(description="random, drift, near_threshold, class:NAME, no_detections, many_detections")
    time: float
    when: str = Field(description="ISO 8601")
    phash: str = Field(description="64-bit perceptual hash, hex")


class CaptureList(BaseModel):
    model: str
    total: int = Field(description="captures matching the filters (before limit/offset)")
    captures: list[Capture] = Field(description="newest first")


class CapturePurge(BaseModel):
    model: str
    purged: list[str] = Field(description="ids of the captures deleted, with their images")
