"""Box, mask, keypoint and rotated-box math from model-input pixels back to the original image.

Plain functions with no TorchServe or torch dependency, so tests call them directly; the
handler ships this module inside the .mar. Every mapping undoes the letterbox the same way
Ultralytics' ``scale_boxes`` / ``scale_coords`` / ``scale_image`` do, so served geometry equals
``YOLO(weights).predict``'s.
"""

from __future__ import annotations

import cv2
import numpy as np

from yolo_image import Letterbox


def unletterbox_boxes(boxes: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map xyxy boxes from model-input pixels back to original-image pixels, clipped."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - box.pad_x) / box.gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - box.pad_y) / box.gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, box.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, box.height)
    return out


def unletterbox_points(points: np.ndarray, box: Letterbox, clip: bool = True) -> np.ndarray:
    """Map (..., 2) x/y points from model-input pixels to original-image pixels (clipped like ``scale_coords``)."""
    out = np.asarray(points, dtype=np.float64).copy()
    out[..., 0] = (out[..., 0] - box.pad_x) / box.gain_x
    out[..., 1] = (out[..., 1] - box.pad_y) / box.gain_y
    if clip:
        out[..., 0] = out[..., 0].clip(0, box.width)
        out[..., 1] = out[..., 1].clip(0, box.height)
    return out


def unletterbox_rotated(xywhr: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map (N, 5) rotated boxes (cx, cy, w, h, angle) to original pixels; not clipped, as Ultralytics does for OBB."""
    out = np.asarray(xywhr, dtype=np.float64).reshape(-1, 5).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - [box.pad_x, 0]) / box.gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - [box.pad_y, 0]) / box.gain_y
    return out


def rotated_corners(xywhr: np.ndarray) -> np.ndarray:
    """The 4 corners of each rotated box, (N, 4, 2), in Ultralytics' ``xywhr2xyxyxyxy`` order."""
    boxes = np.asarray(xywhr, dtype=np.float64).reshape(-1, 5)
    ctr, w, h, angle = boxes[:, :2], boxes[:, 2:3], boxes[:, 3:4], boxes[:, 4:5]
    cos, sin = np.cos(angle), np.sin(angle)
    vec1 = np.concatenate([w / 2 * cos, w / 2 * sin], axis=-1)
    vec2 = np.concatenate([-h / 2 * sin, h / 2 * cos], axis=-1)
    return np.stack([ctr + vec1 + vec2, ctr + vec1 - vec2, ctr - vec1 - vec2, ctr - vec1 + vec2], axis=-2)


def polygon_area(points) -> float:
    """Area of a simple polygon given as x/y points, flat or paired (shoelace formula); 0 under three points."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 3:
        return 0.0
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def mask_to_image(mask: np.ndarray, box: Letterbox) -> np.ndarray:
    """A binary mask at model-input size, padding cut off and resized to the original image (``scale_masks``)."""
    top, left = int(box.pad_y), int(box.pad_x)
    inner = np.asarray(mask, dtype=np.float32)[top : top + box.content_height, left : left + box.content_width]
    if inner.shape[:2] != (box.height, box.width):
        inner = cv2.resize(inner, (box.width, box.height), interpolation=cv2.INTER_LINEAR)
    return (inner > 0.5).astype(np.uint8)


def mask_polygons(mask: np.ndarray, box: Letterbox) -> list[np.ndarray]:
    """Outlines of a model-input-size binary mask as polygons in original-image pixels.

    The contours are the ones Ultralytics' ``masks.xy`` traces (external, simple chain, at
    model-input resolution), kept one polygon per separate region instead of being joined
    into a single line, so a mask split in two draws as two shapes.
    """
    contours = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [unletterbox_points(c.reshape(-1, 2).astype(np.float32), box) for c in contours[0] if len(c) >= 3]


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a binary mask: column-major run lengths, starting with a run of zeros."""
    height, width = mask.shape[:2]
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(height), int(width)], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """The binary (height, width) uint8 mask of a COCO uncompressed RLE."""
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, rle["counts"])
    if flat.size != height * width:
        raise ValueError(f"RLE counts cover {flat.size} pixels, the size says {height * width}")
    return flat.reshape((width, height)).T.copy()
