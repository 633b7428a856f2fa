"""Ultralytics' own predictions in the API's JSON shape (notes/contract.md): the reference answers.

Tests compare what the served archive answers with these for parity (``quality.parity``), and
models/train_tasks.py and the retraining score them on a gate set with the task's gate metric
(``quality.tasks``) to set each gate threshold, so both sides of a comparison speak the same JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import numpy as np  # noqa: E402

TOP_K = 5


def _r(values) -> list:
    """Floats rounded to 2 decimals, as the contract has them (nested lists kept)."""
    return np.round(np.asarray(values, np.float64), 2).tolist()


def keypoint_names(model, class_id: int, count: int) -> list[str]:
    """The model's kpt_names for a class when it carries them, else the indices as strings."""
    names = (getattr(model, "kpt_names", None) or {}).get(class_id)
    return [str(n) for n in names] if names and len(names) == count else [str(i) for i in range(count)]


def _detections(result, model) -> list[dict]:
    """Detections of one Results (detect/segment/pose/obb), best first."""
    boxes = result.obb if result.obb is not None else result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    conf = boxes.conf.cpu().numpy()
    cls = boxes.cls.cpu().numpy().astype(int)
    xyxy = boxes.xyxy.cpu().numpy()
    polygons = result.masks.xy if result.masks is not None else None
    keypoints = result.keypoints.data.cpu().numpy() if result.keypoints is not None else None
    if result.obb is not None:
        xywhr, corners = boxes.xywhr.cpu().numpy(), boxes.xyxyxyxy.cpu().numpy()
    out = []
    for i in np.argsort(-conf, kind="stable"):
        det = {
            "class": result.names[cls[i]],
            "class_id": int(cls[i]),
            "confidence": round(float(conf[i]), 4),
            "bbox": _r(xyxy[i]),
        }
        if polygons is not None:
            det["polygons"] = [_r(polygons[i])] if len(polygons[i]) else []
        if keypoints is not None:
            names = keypoint_names(model, int(cls[i]), len(keypoints[i]))
            det["keypoints"] = [
                {"name": n, "x": round(float(x), 2), "y": round(float(y), 2), "confidence": round(float(c), 4)}
                for n, (x, y, c) in zip(names, keypoints[i], strict=True)
            ]
        if result.obb is not None:
            cx, cy, w, h, angle = xywhr[i]
            det["obb"] = {
                "cx": round(float(cx), 2),
                "cy": round(float(cy), 2),
                "w": round(float(w), 2),
                "h": round(float(h), 2),
                "angle": round(float(angle), 4),
            }
            det["corners"] = _r(corners[i])
        out.append(det)
    return out


def _classifications(result, top_k: int) -> list[dict]:
    probs = result.probs.data.cpu().numpy()
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"class": result.names[int(i)], "class_id": int(i), "confidence": round(float(probs[i]), 4)} for i in order]


def to_answer(result, model, task: str, top_k: int = TOP_K) -> dict:
    """One Ultralytics Results -> the contract's JSON body (without model/timing, which are the server's)."""
    height, width = result.orig_shape
    body = {"status": "success", "task": task, "image": {"width": int(width), "height": int(height)}}
    if result.probs is not None:  # a classifier's Results carry class probabilities, no boxes
        body["classifications"] = _classifications(result, top_k)
    else:
        body["detections"] = _detections(result, model)
    return body


def load_model(weights: Path | str):
    """The weights in the Ultralytics class that predicts with them: ``RTDETR`` for RT-DETR, else ``YOLO``."""
    from ultralytics import RTDETR, YOLO

    model = YOLO(str(weights))
    return RTDETR(str(weights)) if type(model.model).__name__.startswith("RTDETR") else model


def reference_answers(
    weights: Path | str,
    images: Sequence[Path | str],
    imgsz: int,
    conf: float = 0.25,
    iou: float = 0.7,
    top_k: int = TOP_K,
    device: str = "cpu",
    max_det: int = 300,
) -> list[dict]:
    """YOLO(weights).predict on each image (one at a time, files as given) -> contract JSON bodies, in order."""
    yolo = load_model(weights)
    answers = []
    for image in images:
        (result,) = yolo.predict(
            str(image), imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, device=device, verbose=False
        )
        answers.append(to_answer(result, yolo.model, yolo.task, top_k))
    return answers
