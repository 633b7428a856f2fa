"""Drift signals of one request: cheap statistics of the image the handler decoded and of the answer it built.

Two tiers. The **input** tier describes the picture (mean luma, luma contrast, sharpness as the
log variance of the Laplacian, colour saturation, JPEG blockiness, aspect ratio): it moves first when a lamp
ages, a lens loses focus or a camera's compression changes, and it is a warning, since the
model may well cope. The **output** tier describes what the model answered (how many
detections, how sure it was, what sizes and classes it saw): a change there is critical. Which
of its parts a task's answer has is the task's own (``signals`` of each unit in ``yolo_tasks``).

Every value is a plain float, or None when a request has nothing to say about the signal (the
mean confidence of an image without detections); class mix is sent as each present class's
count, which the detector turns into the class's excess over its reference share.
Plain numpy and OpenCV, shipped in the .mar beside ``yolo_handler.py``; packaging computes the
reference with the same functions, and the gateway's detectors only read the numbers.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from yolo_contract import CLASS_MIX
from yolo_geometry import polygon_area

MAX_SIGNAL_PIXELS = 100_000  # a larger decode is sampled on a regular grid: the cost stays under a millisecond


def input_signals(rgb: np.ndarray, width: int, height: int) -> dict[str, float | None]:
    """Statistics of the decoded RGB pixels; ``width`` x ``height`` is the upright original's size.

    Contrast (luma spread over its mean) and sharpness (Laplacian variance over the squared mean
    luma) do not move when only the light's strength does, so a brightness change is named
    ``luma`` alone.
    """
    pixels = rgb.shape[0] * rgb.shape[1]
    step = max(1, math.ceil(math.sqrt(pixels / MAX_SIGNAL_PIXELS)))
    sample = np.ascontiguousarray(rgb[::step, ::step]) if step > 1 else rgb
    gray = cv2.cvtColor(sample, cv2.COLOR_RGB2GRAY)
    mean, std = cv2.meanStdDev(gray)
    luma = max(float(mean[0, 0]), 1.0)
    laplacian = cv2.Laplacian(gray, cv2.CV_32F)
    _, lap_std = cv2.meanStdDev(laplacian)
    saturation = cv2.mean(cv2.cvtColor(sample, cv2.COLOR_RGB2HSV))[1] / 255.0
    return {
        "luma": float(mean[0, 0]) / 255.0,
        "contrast": float(std[0, 0]) / luma,
        "sharpness": math.log((float(lap_std[0, 0]) ** 2 + 1e-6) / luma**2),
        "saturation": saturation,
        "blockiness": blockiness(rgb, width),
        "aspect": math.log(width / height),
    }


def blockiness(rgb: np.ndarray, width: int) -> float | None:
    """How much larger luma steps are across JPEG's 8x8 block edges than inside blocks (log ratio).

    Heavy compression (a camera's encoder set to a low quality) leaves steps at the block grid.
    A JPEG decoded at 1/2 or 1/4 scale from its DCT coefficients has its grid every 4 or 2
    pixels; at 1/8 there is none to see (None). Measured on a centre crop of at most 256x256
    pixels, aligned to the grid.
    """
    period = round(8 * rgb.shape[1] / width)
    if period < 2:
        return None
    side = min(256, rgb.shape[0], rgb.shape[1]) // period * period
    if side < 4 * period:
        return None
    top = (rgb.shape[0] - side) // 2 // period * period
    left = (rgb.shape[1] - side) // 2 // period * period
    gray = cv2.cvtColor(np.ascontiguousarray(rgb[top : top + side, left : left + side]), cv2.COLOR_RGB2GRAY)
    gray = gray.astype(np.int16)
    across_x, across_y = np.abs(np.diff(gray, axis=1)), np.abs(np.diff(gray, axis=0))
    edge = float(across_x[:, period - 1 :: period].sum() + across_y[period - 1 :: period, :].sum())
    edges = across_x[:, period - 1 :: period].size + across_y[period - 1 :: period, :].size
    inside = (float(across_x.sum() + across_y.sum()) - edge) / (across_x.size + across_y.size - edges)
    return math.log((edge / edges + 0.5) / (inside + 0.5))


def detection_signals(detections: list[dict], width: int, height: int) -> dict:
    """The output tier every task with boxes shares: how many, how sure, how large, which classes."""
    confidences = [d["confidence"] for d in detections]
    area = float(width * height)
    return {
        "detections": float(len(detections)),
        "confidence_mean": float(np.mean(confidences)) if detections else None,
        "confidence_min": float(min(confidences)) if detections else None,
        "box_area": _log_mean(
            [(d["bbox"][2] - d["bbox"][0]) * (d["bbox"][3] - d["bbox"][1]) / area for d in detections]
        ),
        **class_counts([d["class"] for d in detections]),
    }


def keypoint_confidence(detections: list[dict]) -> float | None:
    """Mean confidence of the keypoints that have one (pose)."""
    scores = [k["confidence"] for d in detections for k in d["keypoints"] if k["confidence"] is not None]
    return float(np.mean(scores)) if scores else None


def mask_area(detections: list[dict], width: int, height: int) -> float | None:
    """Log of the mean share of the image the detections' outlines cover (segment)."""
    return _log_mean([sum(polygon_area(p) for p in d["polygons"]) / float(width * height) for d in detections])


def top_class_signals(classifications: list[dict]) -> dict:
    """A classifier's output tier: how sure its top class is, and which it is."""
    top = classifications[0]
    return {"top1_confidence": float(top["confidence"]), **class_counts([top["class"]])}


def class_counts(found: list[str]) -> dict[str, float]:
    """How many of ``found`` each class has, for the classes present (``class_mix:<name>``).

    The detector turns counts into each tracked class's excess over its reference share of
    the request's total; a class absent from the answer counts zero.
    """
    counts: dict[str, float] = {}
    for name in found:
        counts[CLASS_MIX + name] = counts.get(CLASS_MIX + name, 0.0) + 1.0
    return counts


def _log_mean(values: list[float]) -> float | None:
    return math.log(max(float(np.mean(values)), 1e-9)) if values else None
