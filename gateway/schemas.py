"""Typed request and response models: they are what ``/docs`` shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str = Field(examples=["yolo"])
    version: str = Field(examples=["1.0"])


class ImageSize(BaseModel):
    width: int = Field(gt=0, examples=[1280])
    height: int = Field(gt=0, examples=[720])


class Detection(BaseModel):
    class_name: str = Field(alias="class", examples=["scratch"])
    class_id: int = Field(ge=0, examples=[0])
    confidence: float = Field(ge=0, le=1, examples=[0.91])
    bbox: list[float] = Field(
        min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels of the upright original image"
    )

    model_config = {"populate_by_name": True}


class Timing(BaseModel):
    total: float = Field(description="time spent in the gateway for this request, ms")
    upstream: float = Field(description="round trip to TorchServe, ms")
    preprocess: float = Field(0.0, description="decode and letterbox in the handler, ms")
    inference: float = Field(description="model forward pass (of the whole TorchServe batch), ms")
    postprocess: float = Field(0.0, description="NMS and box mapping in the handler, ms")


class PredictResponse(BaseModel):
    status: Literal["success"] = "success"
    model: ModelRef
    image: ImageSize
    detections: list[Detection] = Field(description="sorted by confidence, highest first")
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
    model: ModelRef | None = None
    image: ImageSize | None = None
    detections: list[Detection] | None = None
    timing_ms: Timing | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    status: Literal["success"] = "success"
    results: list[BatchItem] = Field(description="one entry per uploaded file, in request order")


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    model: str
    version: str | None = None
    workers_ready: int = 0
    reason: str | None = None


class ModelVersion(BaseModel):
    version: str
    is_default: bool
    workers_ready: int
    workers_total: int
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None


class ModelsResponse(BaseModel):
    model: str
    default_version: str | None
    versions: list[ModelVersion]
