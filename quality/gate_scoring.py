"""How the gate scores a model's answers against a gate set's labels: matching, recall, PCK, top-1, thresholds.

Each task's metric (``quality.tasks``: recall for detect, segment and obb, PCK for pose, top-1 for classify)
is one of these functions, fed the task's own overlap; the answers are contract JSON bodies, one per gate item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from serving.yolo_contract import answer_items

IOU_MATCH = 0.5
PCK_FRACTION = 0.1

Overlap = Callable[[dict, dict, int, int], float]  # (labelled object, found object, width, height) -> IoU


def found(answer: dict) -> list[dict]:
    """What an answer found, best first; an error answer found nothing, so all its objects count as missed."""
    if answer.get("status") != "success":
        return []
    return sorted(answer_items(answer), key=lambda d: -d["confidence"])


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


def _pairs(item: dict, predictions: list[dict], overlap: Overlap) -> dict[int, int]:
    return match(item["objects"], predictions, lambda obj, pred: overlap(obj, pred, item["width"], item["height"]))


def recall(items: list[dict], answers: list[dict], overlap: Overlap) -> float:
    """Share of labelled objects found by an answer's object of the same class at ``overlap`` >= 0.5."""
    hits = total = 0
    for item, answer in zip(items, answers, strict=True):
        hits += len(_pairs(item, found(answer), overlap))
        total += len(item["objects"])
    if not total:
        raise ValueError("gate set has no labelled objects")
    return hits / total


def _default_names(names: Sequence[str]) -> bool:
    """Keypoint names that are only their indices: what a side without ``kpt_names`` calls its keypoints."""
    return list(names) == [str(i) for i in range(len(names))]


def paired_keypoints(truth_names: Sequence[str], predicted: Sequence[dict]) -> list[dict | None]:
    """A detection's keypoints in the order of the labelled ones: by name when both sides name them
    (``kpt_names`` in the weights and in data.yaml), by index when either does not (``kpt_names`` is
    optional in Ultralytics datasets) or their names share none."""
    pred_names = [str(k.get("name")) for k in predicted]
    if not (_default_names(truth_names) or _default_names(pred_names)) and set(truth_names) & set(pred_names):
        by_name = {str(k.get("name")): k for k in predicted}
        return [by_name.get(name) for name in truth_names]
    return [predicted[i] if i < len(predicted) else None for i in range(len(truth_names))]


def pck(items: list[dict], answers: list[dict], overlap: Overlap) -> float:
    """Share of labelled visible keypoints predicted within 0.1 x max(w, h) of their box, by a detection
    matched at ``overlap`` >= 0.5."""
    hits = total = 0
    for item, answer in zip(items, answers, strict=True):
        preds = found(answer)
        pairs = _pairs(item, preds, overlap)
        for t_idx, obj in enumerate(item["objects"]):
            x1, y1, x2, y2 = obj["bbox"]
            radius = PCK_FRACTION * max(x2 - x1, y2 - y1)
            predicted = (preds[pairs[t_idx]].get("keypoints") or []) if t_idx in pairs else []
            guesses = paired_keypoints([k[3] for k in obj["keypoints"]], predicted)
            for (x, y, v, _), guess in zip(obj["keypoints"], guesses, strict=True):
                if v <= 0:
                    continue
                total += 1
                hits += guess is not None and np.hypot(guess["x"] - x, guess["y"] - y) <= radius
    if not total:
        raise ValueError("gate set has no visible keypoints")
    return float(hits / total)


def top1(items: list[dict], answers: list[dict]) -> float:
    """Share of images whose best class is the labelled one."""
    right = 0
    for item, answer in zip(items, answers, strict=True):
        ranked = found(answer)
        right += bool(ranked) and ranked[0]["class"] == item["class"]
    if not items:
        raise ValueError("gate set has no images")
    return right / len(items)


def threshold_from(measured: float, margin: float = 0.1, step: float = 0.05, ceiling: float = 0.9) -> float:
    """Gate threshold for a freshly measured metric: margin below it, floored to a step, at most the ceiling."""
    return round(min(max(np.floor((measured - margin) / step + 1e-9) * step, 0.0), ceiling), 2)
