"""The deploy gate's arithmetic: read a labelled gate set and score a model's answers on it.

One place for the math, used twice: the deploy gate scores the API's answers (the JSON of
notes/contract.md) and models/train_tasks.py scores Ultralytics' own predictions, converted
to the same JSON by quality/reference.py, to set each archive's threshold.

Metrics (one per task):
  detect, segment, obb  recall: share of labelled objects found by a prediction of the same
                        class at IoU >= 0.5 (box, mask and rotated-box IoU respectively)
  pose                  PCK: share of labelled visible keypoints predicted within
                        0.1 x max(w, h) of the labelled box, by a detection matched at box IoU >= 0.5
  classify              top-1 accuracy
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image, ImageOps

IOU_MATCH = 0.5
PCK_FRACTION = 0.1
METRICS = {"detect": "recall", "segment": "recall", "obb": "recall", "pose": "pck", "classify": "top1"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two axis-aligned boxes [x1, y1, x2, y2]."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def rasterise(polygons: Sequence[Sequence[Sequence[float]]], width: int, height: int) -> np.ndarray:
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


def polygon_area(corners: Sequence[Sequence[float]]) -> float:
    """Area of a simple polygon (shoelace formula)."""
    p = np.asarray(corners, np.float64).reshape(-1, 2)
    return float(abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))) / 2)


def rotated_iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Exact IoU of two convex quadrilaterals given by their corners (any order around the outline)."""
    pa, pb = (cv2.convexHull(np.asarray(c, np.float32).reshape(-1, 2)).reshape(-1, 2) for c in (a, b))
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    union = polygon_area(pa) + polygon_area(pb) - inter
    return float(inter / union) if union > 0 else 0.0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the upright image, EXIF orientation applied (as the API reports it)."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


def parse_label_line(task: str, line: str, width: int, height: int, names: dict[int, str]) -> dict:
    """One YOLO label line -> an object in pixels: class_id, class, bbox and the task's geometry."""
    values = line.split()
    cls, nums = int(values[0]), np.asarray(values[1:], np.float64)
    obj: dict = {"class_id": cls, "class": names[cls]}
    if task in ("detect", "pose"):
        cx, cy, bw, bh = nums[:4] * [width, height, width, height]
        obj["bbox"] = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        if task == "pose":
            kpts = nums[4:].reshape(-1, 3)
            obj["keypoints"] = [[x * width, y * height, v] for x, y, v in kpts.tolist()]
        return obj
    pts = (nums.reshape(-1, 2) * [width, height]).tolist()
    obj["polygon" if task == "segment" else "corners"] = pts
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    obj["bbox"] = [min(xs), min(ys), max(xs), max(ys)]
    return obj


def gate_spec(gate_dir: Path) -> dict:
    """gate.yaml of a gate set: task, metric, threshold (and how the threshold was measured)."""
    spec = yaml.safe_load((Path(gate_dir) / "gate.yaml").read_text())
    if spec.get("task") not in METRICS:
        raise ValueError(f"{gate_dir}/gate.yaml: unknown task {spec.get('task')!r}")
    return spec


def load_gate_set(gate_dir: Path) -> tuple[str, list[dict]]:
    """Read a gate set into (task, items), one item per image sorted by file name.

    Items: {"image": Path, "width", "height", "objects": [...]} with objects as parse_label_line
    gives them (YOLO label files, data.yaml names and, for pose, kpt_names), or for classify
    {"image", "width", "height", "class"} from the <class>/ folder the image is in.
    """
    gate_dir = Path(gate_dir)
    task = gate_spec(gate_dir)["task"]
    if task == "classify":
        images = sorted(p for p in gate_dir.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return task, [
            {"image": p, **dict(zip(("width", "height"), image_size(p), strict=True)), "class": p.parent.name}
            for p in images
        ]
    data = yaml.safe_load((gate_dir / "data.yaml").read_text())
    names = {int(k): str(v) for k, v in data["names"].items()}
    kpt_names = [str(n) for n in (data.get("kpt_names") or {}).get(0, [])]
    items = []
    image_dir = gate_dir / "images" if (gate_dir / "images").is_dir() else gate_dir  # or beside labels/
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        width, height = image_size(image)
        label = gate_dir / "labels" / f"{image.stem}.txt"
        lines = label.read_text().splitlines() if label.exists() else []
        objects = [parse_label_line(task, line, width, height, names) for line in lines if line.strip()]
        for obj in objects:
            for i, kpt in enumerate(obj.get("keypoints", [])):
                kpt.append(kpt_names[i] if i < len(kpt_names) else str(i))
        items.append({"image": image, "width": width, "height": height, "objects": objects})
    return task, items


def _detections(answer: dict) -> list[dict]:
    """An answer's detections best first; an error answer has none, so all its objects count as missed."""
    if answer.get("status") != "success":
        return []
    return sorted(answer.get("detections", []), key=lambda d: -d["confidence"])


def match(truth: list[dict], predictions: list[dict], iou: Callable[[dict, dict], float]) -> dict[int, int]:
    """Greedy matching, best prediction first: each takes the unmatched same-class object it overlaps most
    at IoU >= 0.5. Returns {truth index: prediction index}."""
    matched: dict[int, int] = {}
    for p_idx, pred in enumerate(predictions):
        best, best_iou = None, IOU_MATCH
        for t_idx, obj in enumerate(truth):
            if t_idx in matched or obj["class"] != pred["class"]:
                continue
            value = iou(obj, pred)
            if value >= best_iou:
                best, best_iou = t_idx, value
        if best is not None:
            matched[best] = p_idx
    return matched


def _box_pair(obj: dict, pred: dict) -> float:
    return box_iou(obj["bbox"], pred["bbox"])


def _obb_pair(obj: dict, pred: dict) -> float:
    return rotated_iou(obj["corners"], pred["corners"])


def _recall(task: str, items: list[dict], answers: list[dict]) -> float:
    found = total = 0
    for item, answer in zip(items, answers, strict=True):
        preds = _detections(answer)
        if task == "segment":
            size = item["width"], item["height"]
            truth_masks = [rasterise([o["polygon"]], *size) for o in item["objects"]]
            pred_masks = [rasterise(p.get("polygons", []), *size) for p in preds]

            def pair(obj: dict, pred: dict, _t=truth_masks, _p=pred_masks, _o=item["objects"], _d=preds) -> float:
                return mask_iou(_t[_o.index(obj)], _p[_d.index(pred)])

        else:
            pair = _obb_pair if task == "obb" else _box_pair
        found += len(match(item["objects"], preds, pair))
        total += len(item["objects"])
    if not total:
        raise ValueError("gate set has no labelled objects")
    return found / total


def _pck(items: list[dict], answers: list[dict]) -> float:
    hits = total = 0
    for item, answer in zip(items, answers, strict=True):
        preds = _detections(answer)
        pairs = match(item["objects"], preds, _box_pair)
        for t_idx, obj in enumerate(item["objects"]):
            x1, y1, x2, y2 = obj["bbox"]
            radius = PCK_FRACTION * max(x2 - x1, y2 - y1)
            pred_kpts = {k["name"]: k for k in preds[pairs[t_idx]]["keypoints"]} if t_idx in pairs else {}
            for x, y, v, name in obj["keypoints"]:
                if v <= 0:
                    continue
                total += 1
                guess = pred_kpts.get(name)
                hits += guess is not None and np.hypot(guess["x"] - x, guess["y"] - y) <= radius
    if not total:
        raise ValueError("gate set has no visible keypoints")
    return hits / total


def _top1(items: list[dict], answers: list[dict]) -> float:
    right = 0
    for item, answer in zip(items, answers, strict=True):
        ranked = answer.get("classifications", []) if answer.get("status") == "success" else []
        right += bool(ranked) and max(ranked, key=lambda c: c["confidence"])["class"] == item["class"]
    if not items:
        raise ValueError("gate set has no images")
    return right / len(items)


def score(task: str, truth_items: list[dict], answers: list[dict]) -> float:
    """The task's gate metric in [0, 1] for answers (contract JSON bodies, one per item, same order)."""
    if len(truth_items) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(truth_items)} gate images")
    if task == "pose":
        return _pck(truth_items, answers)
    if task == "classify":
        return _top1(truth_items, answers)
    if task in ("detect", "segment", "obb"):
        return _recall(task, truth_items, answers)
    raise ValueError(f"unknown task {task!r}")


def threshold_from(measured: float, margin: float = 0.1, step: float = 0.05, ceiling: float = 0.9) -> float:
    """Gate threshold for a freshly measured metric: margin below it, floored to a step, at most the ceiling."""
    return round(min(max(np.floor((measured - margin) / step + 1e-9) * step, 0.0), ceiling), 2)
