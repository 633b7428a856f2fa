"""Plane geometry of labels and answers in image pixels: overlaps, areas, rotated-box corners, polygons.

One module of plain functions for everything outside the handler that compares or converts shapes: the
gate's scoring, parity with Ultralytics, and the retraining's label lines. The handler's own tensor math
from model-input pixels back to the image (``serving/yolo_geometry.py``) is another concept and stays there.
One function is written twice on purpose: ``polygon_area`` is also in ``serving/yolo_geometry.py``, for the
drift signals' mask area, because the handler ships alone inside the .mar and cannot import this module,
and that module's flat imports (``from yolo_image import ...``) cannot be imported from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

Points = Sequence[Sequence[float]]


def clip_unit(value: float) -> float:
    """A normalised coordinate cut to [0, 1]."""
    return min(max(float(value), 0.0), 1.0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two axis-aligned boxes [x1, y1, x2, y2]."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def clip_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """A box [x1, y1, x2, y2] cut to the image, as every served box is."""
    x1, y1, x2, y2 = box
    return [min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height)]


def rasterise(polygons: Sequence[Points], width: int, height: int) -> np.ndarray:
    """Boolean mask (height, width) of the union of filled polygons (pixel coordinates, 1/16 px precision)."""
    mask = np.zeros((height, width), np.uint8)
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2) * 16).astype(np.int32) for p in polygons if len(p) >= 3]
    if pts:
        cv2.fillPoly(mask, pts, 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def polygons_iou(a: Sequence[Points], b: Sequence[Points], width: int, height: int) -> float:
    """IoU of the areas two sets of polygons cover in a ``width`` x ``height`` image (mask IoU)."""
    return mask_iou(rasterise(a, width, height), rasterise(b, width, height))


def polygon_area(corners: Points) -> float:
    """Area of a simple polygon (shoelace formula)."""
    p = np.asarray(corners, np.float64).reshape(-1, 2)
    return float(abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))) / 2)


def rotated_iou(a: Points, b: Points) -> float:
    """Exact IoU of two convex quadrilaterals given by their corners (any order around the outline)."""
    pa, pb = (cv2.convexHull(np.asarray(c, np.float32).reshape(-1, 2)).reshape(-1, 2) for c in (a, b))
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    union = polygon_area(pa) + polygon_area(pb) - inter
    return float(inter / union) if union > 0 else 0.0


def obb_corners(cx: float, cy: float, w: float, h: float, angle: float) -> list[list[float]]:
    """The four corners of a rotated box (centre, size, angle in radians), in Ultralytics' xywhr2xyxyxyxy order."""
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = (w / 2 * cos, w / 2 * sin), (-h / 2 * sin, h / 2 * cos)
    return [[cx + a * u[0] + b * v[0], cy + a * u[1] + b * v[1]] for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))]


def box_polygon(bbox: Sequence[float]) -> list[list[float]]:
    """A box [x1, y1, x2, y2] as a 4-point polygon, clockwise from the top left."""
    x1, y1, x2, y2 = bbox
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def envelope(points: Points) -> list[float]:
    """The axis-aligned box [x1, y1, x2, y2] that encloses ``points``."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]
