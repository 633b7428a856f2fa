"""The label side of each task, one object per task looked up by name (``task_of``): what a YOLO label line
holds, how the gate scores answers, how parity compares two answers, whether an answer lists classes or
objects, how an answer's object becomes a label line, and how a person's label line is checked on import.

Like Ultralytics' per-task predictors, each task overrides only what differs from detection. It lives in
quality/ because the gate, parity, packaging, retraining and models all read it, and quality/ is what each
of them may import (tests/test_layout.py); it needs numpy and OpenCV, which the .mar's handler does not
load for labels, so it does not ship there (the handler builds answers with serving/yolo_tasks.py).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from quality.gate_scoring import pck, recall, top1
from quality.geometry import (
    box_iou,
    box_polygon,
    clip_box,
    clip_unit,
    envelope,
    obb_corners,
    polygon_area,
    polygons_iou,
    rotated_iou,
)

Kpt = tuple[list[int], dict[int, list[str]]]  # (kpt_shape, each class's keypoint names in label order)
TOLERANCE = 0.01  # normalised coordinates may stray this far outside [0, 1] (Ultralytics' own tolerance)


def _normalised(points: list, width: int, height: int) -> list[float]:
    """Pixel points as a label's flat, normalised x y list, clipped to the image."""
    return [clip_unit(c / s) for x, y in points for c, s in ((x, width), (y, height))]


class LabelTask(ABC):
    """What every task has: a name, a gate metric, what a label holds, and whether it names classes."""

    name: str
    metric: str
    classifies = False  # True: an answer lists classes, a dataset is one folder per class, there are no label files
    keypoints = False  # True: objects carry named keypoints (kpt_shape and kpt_names in the dataset's data.yaml)
    label_shape: str

    @abstractmethod
    def fits(self, count: int, kpt_dim: int) -> bool:
        """Whether ``count`` numbers after the class id make a label line of this task."""

    def gate_metric(self, items: list[dict], answers: list[dict]) -> float:
        """The task's gate metric in [0, 1] for answers (contract JSON bodies, one per gate item, same order)."""
        if len(items) != len(answers):
            raise ValueError(f"{len(answers)} answers for {len(items)} gate images")
        return self._metric(items, answers)

    @abstractmethod
    def _metric(self, items: list[dict], answers: list[dict]) -> float:
        """The metric itself, on as many answers as items."""


class DetectTask(LabelTask):
    """Objects in boxes: a label line is a box (cx cy w h) or a polygon (its enclosing box is the object); the
    gate metric is recall at box IoU >= 0.5."""

    name = "detect"
    metric = "recall"
    label_shape = "4 numbers (cx cy w h) or a polygon"
    boxed = True  # an imported label line starts with a box (cx cy w h), whose size must be positive

    def fits(self, count: int, kpt_dim: int) -> bool:
        return count == 4 or _polygon_count(count)

    def geometry(self, nums: np.ndarray, width: int, height: int, kpt_dim: int) -> dict:
        """A label line's numbers (after the class id, normalised) as the object's geometry in pixels."""
        if len(nums) == 4:
            return {"bbox": _box(nums, width, height)}
        return {"bbox": envelope(_points(nums, width, height))}

    def overlap(self, truth: dict, found: dict, width: int, height: int) -> float:
        """How a labelled object and an answer's object overlap, for the gate's matching."""
        return box_iou(truth["bbox"], found["bbox"])

    def _metric(self, items: list[dict], answers: list[dict]) -> float:
        return recall(items, answers, self.overlap)

    def answer_overlap(self, a: dict, b: dict, width: int, height: int) -> float:
        """How two answers' objects for the same image overlap (parity pairs them by it)."""
        return box_iou(clip_box(a["bbox"], width, height), clip_box(b["bbox"], width, height))

    def parity_figures(self, served: dict, reference: dict, width: int, height: int) -> dict[str, float]:
        """The figures parity holds a served object to against Ultralytics' own (``quality.parity.Worst``)."""
        return {"box_iou": box_iou(served["bbox"], clip_box(reference["bbox"], width, height))}

    def label_values(self, found: dict, width: int, height: int, kpt: Kpt | None = None) -> list[float]:
        """An answer's object as the numbers of its YOLO label line (after the class id), normalised and clipped."""
        x1, y1, x2, y2 = (clip_unit(v / s) for v, s in zip(found["bbox"], (width, height, width, height), strict=True))
        return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]

    def import_fits(self, count: int, kpt_shape: list[int] | None) -> bool:
        """Whether ``count`` numbers after the class id make a label line a person may import: ``fits``
        without what Ultralytics reads leniently (a detect line is a box, a pose line has every keypoint)."""
        return count == 4

    def import_length(self, kpt_shape: list[int] | None) -> str:
        """How many values such a line has, class id included, for the message that refuses another count."""
        return "5"

    def import_values(self, values: list[float], kpt_shape: list[int] | None) -> list[float]:
        """A person's label line (the numbers after the class id, as many as ``import_fits`` takes) checked
        and clipped to [0, 1]; ValueError saying what is wrong and how to fix it."""
        coordinates = self._coordinates(values, kpt_shape)
        bad = [v for v in coordinates if not (-TOLERANCE <= v <= 1 + TOLERANCE) or math.isnan(v)]
        if bad:
            raise ValueError(f"coordinate {bad[0]} is outside [0, 1]: coordinates are fractions of the image")
        if self.boxed and (values[2] <= 0 or values[3] <= 0):
            raise ValueError(f"a box of width {values[2]} and height {values[3]}: fix the box size")
        return [clip_unit(v) for v in values]

    def _coordinates(self, values: list[float], kpt_shape: list[int] | None) -> list[float]:
        """The values of a label line that are fractions of the image."""
        return values


class SegmentTask(DetectTask):
    """Objects as polygons: the gate matches them by mask IoU; a label is the answer's largest polygon."""

    name = "segment"
    label_shape = "a polygon (3 or more x y pairs)"
    boxed = False

    def fits(self, count: int, kpt_dim: int) -> bool:
        return _polygon_count(count)

    def import_fits(self, count: int, kpt_shape: list[int] | None) -> bool:
        return _polygon_count(count)

    def import_length(self, kpt_shape: list[int] | None) -> str:
        return "1 + an even number of at least 6"

    def geometry(self, nums: np.ndarray, width: int, height: int, kpt_dim: int) -> dict:
        points = _points(nums, width, height)
        return {"polygon": points, "bbox": envelope(points)}

    def overlap(self, truth: dict, found: dict, width: int, height: int) -> float:
        return polygons_iou([truth["polygon"]], found.get("polygons", []), width, height)

    def answer_overlap(self, a: dict, b: dict, width: int, height: int) -> float:
        return polygons_iou(a.get("polygons") or [], b.get("polygons") or [], width, height)

    def parity_figures(self, served: dict, reference: dict, width: int, height: int) -> dict[str, float]:
        mask = {"mask_iou": self.answer_overlap(served, reference, width, height)}
        return super().parity_figures(served, reference, width, height) | mask

    def label_values(self, found: dict, width: int, height: int, kpt: Kpt | None = None) -> list[float]:
        return _normalised(largest_polygon(found), width, height)


class PoseTask(DetectTask):
    """Objects in boxes with keypoints: a label line is the box, then x y (visibility) per keypoint; the gate
    metric is PCK of the detections matched at box IoU >= 0.5."""

    name = "pose"
    metric = "pck"
    label_shape = "4 box numbers (cx cy w h), then x y visibility per keypoint (x y with kpt_shape [k, 2])"
    visible = 0.5  # a keypoint answered at or above this confidence is labelled visible (v=2), else 0 0 0
    keypoints = True

    def fits(self, count: int, kpt_dim: int) -> bool:
        return count >= 4 and (count - 4) % kpt_dim == 0

    def import_fits(self, count: int, kpt_shape: list[int] | None) -> bool:
        return count == 4 + kpt_shape[0] * kpt_shape[1]

    def import_length(self, kpt_shape: list[int] | None) -> str:
        return str(5 + kpt_shape[0] * kpt_shape[1])

    def import_values(self, values: list[float], kpt_shape: list[int] | None) -> list[float]:
        """The box and keypoints checked and clipped; a visibility (kpt_shape [k, 3]) is 0, 1 or 2, kept as is."""
        clipped = super().import_values(values, kpt_shape)
        if kpt_shape[1] != 3:
            return clipped
        visibility = values[4 + 2 :: 3]
        if any(v not in (0, 1, 2) for v in visibility):
            raise ValueError(f"keypoint visibility {visibility} is not 0, 1 or 2: fix the line")
        return [v if i >= 4 and (i - 4) % 3 == 2 else c for i, (v, c) in enumerate(zip(values, clipped, strict=True))]

    def _coordinates(self, values: list[float], kpt_shape: list[int] | None) -> list[float]:
        return values[:4] + [v for i, v in enumerate(values[4:]) if i % kpt_shape[1] < 2]

    def geometry(self, nums: np.ndarray, width: int, height: int, kpt_dim: int) -> dict:
        kpts = nums[4:].reshape(-1, kpt_dim).tolist()
        keypoints = [[k[0] * width, k[1] * height, k[2] if kpt_dim == 3 else 2.0] for k in kpts]
        return {"bbox": _box(nums, width, height), "keypoints": keypoints}

    def _metric(self, items: list[dict], answers: list[dict]) -> float:
        return pck(items, answers, self.overlap)

    def parity_figures(self, served: dict, reference: dict, width: int, height: int) -> dict[str, float]:
        pairs = zip(served["keypoints"], reference["keypoints"], strict=True)
        distance = max((float(np.hypot(a["x"] - b["x"], a["y"] - b["y"])) for a, b in pairs), default=0.0)
        return super().parity_figures(served, reference, width, height) | {"keypoint_px": distance}

    def label_values(self, found: dict, width: int, height: int, kpt: Kpt | None = None) -> list[float]:
        """The box, then each of the class's keypoints in ``kpt``'s order: x y 2 when answered at ``visible``
        confidence or more inside the image, else 0 0 0 (x y, or 0 0, with kpt_shape [k, 2])."""
        values = super().label_values(found, width, height)
        (_, ndim), layout = kpt
        answered = {str(k["name"]): k for k in found.get("keypoints") or []}
        for name in layout[int(found["class_id"])]:
            k = answered.get(name)
            if ndim == 2:
                values += [clip_unit(k["x"] / width), clip_unit(k["y"] / height)] if k else [0.0, 0.0]
            elif k and self.is_visible(k, width, height):
                values += [k["x"] / width, k["y"] / height, 2]
            else:
                values += [0.0, 0.0, 0]
        return values

    def is_visible(self, keypoint: dict, width: int, height: int) -> bool:
        """An answered keypoint sure enough, and inside the image, to be labelled as seen."""
        return keypoint["confidence"] >= self.visible and 0 <= keypoint["x"] <= width and 0 <= keypoint["y"] <= height


class ObbTask(DetectTask):
    """Objects in rotated boxes: a label line is the 4 corners; the gate matches them by rotated-box IoU."""

    name = "obb"
    label_shape = "8 numbers (4 corners x y)"
    boxed = False

    def fits(self, count: int, kpt_dim: int) -> bool:
        return count == 8

    def import_fits(self, count: int, kpt_shape: list[int] | None) -> bool:
        return count == 8

    def import_length(self, kpt_shape: list[int] | None) -> str:
        return "9"

    def geometry(self, nums: np.ndarray, width: int, height: int, kpt_dim: int) -> dict:
        corners = _points(nums, width, height)
        return {"corners": corners, "bbox": envelope(corners)}

    def overlap(self, truth: dict, found: dict, width: int, height: int) -> float:
        return rotated_iou(truth["corners"], found["corners"])

    def answer_overlap(self, a: dict, b: dict, width: int, height: int) -> float:
        return rotated_iou(a["corners"], b["corners"])

    def parity_figures(self, served: dict, reference: dict, width: int, height: int) -> dict[str, float]:
        # an obb's axis-aligned box is clipped when served, not by Ultralytics: compare the corners alone
        return {"obb_iou": self.answer_overlap(served, reference, width, height)}

    def label_values(self, found: dict, width: int, height: int, kpt: Kpt | None = None) -> list[float]:
        return _normalised(found.get("corners") or obb_corners(**found["obb"]), width, height)


class ClassifyTask(LabelTask):
    """One class per image, from a folder per class: no label lines, no geometry; the gate metric is top-1."""

    name = "classify"
    metric = "top1"
    classifies = True
    label_shape = "no label file: the image's folder is its class"

    def fits(self, count: int, kpt_dim: int) -> bool:
        return False

    def _metric(self, items: list[dict], answers: list[dict]) -> float:
        return top1(items, answers)


LABEL_TASKS = {task.name: task for task in (DetectTask(), SegmentTask(), PoseTask(), ObbTask(), ClassifyTask())}
METRICS = {name: task.metric for name, task in LABEL_TASKS.items()}


def task_of(name: str) -> LabelTask:
    """The label side of task ``name``; ValueError naming the tasks there are for any other name."""
    try:
        return LABEL_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: one of {', '.join(LABEL_TASKS)}") from None


def largest_polygon(found: dict) -> list[list[float]]:
    """An answer's object as one polygon (pixels): its largest one, or its box when it has none."""
    polygons = [p for p in found.get("polygons") or [] if len(p) >= 3]
    return max(polygons, key=polygon_area) if polygons else box_polygon(found["bbox"])


def _polygon_count(count: int) -> bool:
    return count >= 6 and count % 2 == 0


def _box(nums: np.ndarray, width: int, height: int) -> list[float]:
    cx, cy, bw, bh = nums[:4] * [width, height, width, height]
    return [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]


def _points(nums: np.ndarray, width: int, height: int) -> list[list[float]]:
    return (np.asarray(nums, np.float64).reshape(-1, 2) * [width, height]).tolist()
