"""How each Ultralytics task turns one image's raw model output into the API's answer.

One small unit per task, as Ultralytics' own ``models/yolo/<task>/predict.py``: each says
how its input is prepared and how its results are built, and nothing else. The math lives
in ``yolo_geometry``; non-maximum suppression and mask assembly are Ultralytics' own
functions, called with the arguments its predictors use, so the answers equal
``YOLO(weights).predict``'s. Shipped in the .mar next to ``yolo_handler.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from yolo_signals import detection_signals, keypoint_confidence, mask_area, top_class_signals

from yolo_geometry import (
    mask_polygons,
    mask_to_image,
    rle_encode,
    rotated_corners,
    unletterbox_boxes,
    unletterbox_points,
    unletterbox_rotated,
)
from yolo_image import Letterbox, letterbox
from yolo_request import HandlerConfig, Params


@dataclass(frozen=True)
class Input:
    """One image made ready for the model: the HWC uint8 input and how it maps back to the original."""

    canvas: np.ndarray
    width: int
    height: int
    box: Letterbox | None


@dataclass
class Prepared:
    """A decoded request, made ready for its task, waiting for the batched forward pass."""

    input: Input
    params: Params
    preprocess_ms: float
    image_signals: dict  # the input tier of the drift signals, taken from the decoded pixels


def _round(values) -> list:
    return np.round(np.asarray(values, dtype=np.float64), 2).tolist()


class DetectTask:
    """Boxes: NMS (or the end-to-end head's own selection), then boxes mapped to the original image."""

    name = "detect"
    rotated = False
    extra_columns = False  # the raw output carries more than boxes and class scores (masks, keypoints, an angle)
    kept_side = max  # the side a reduced decode keeps >= imgsz: the letterbox scales the long side to it

    def __init__(self, config: HandlerConfig, names: dict[int, str], end2end: bool, kpt_shape=None):
        self.config = config
        self.names = names
        self.end2end = end2end
        self.kpt_shape = tuple(kpt_shape) if kpt_shape else None

    def prepare(self, rgb: np.ndarray, original: tuple[int, int] | None = None) -> Input:
        """The model input for ``rgb``, which stands for an upright original of ``original`` (width, height)."""
        canvas, box = letterbox(rgb, self.config.imgsz, original=original)
        return Input(canvas, box.width, box.height, box)

    def split(self, raw) -> list:
        """Per-image slices of a batch's raw output (what ``answer`` takes)."""
        prediction = raw[0] if isinstance(raw, (list, tuple)) else raw
        return [prediction[row : row + 1] for row in range(prediction.shape[0])]

    def answer(self, output, item: Input, params: Params) -> dict:
        rows = self._nms(output, params).float().numpy()
        return {"detections": self._detections(rows, unletterbox_boxes(rows[:, :4], item.box), self._extra(rows, item))}

    def signals(self, answer: dict, width: int, height: int) -> dict:
        """The output tier of the drift signals of an answer of this task, for an image of ``width`` x ``height``."""
        return detection_signals(answer["detections"], width, height)

    def _extra(self, rows: np.ndarray, item: Input):
        """What the task adds to detection ``index`` beyond its box; nothing for plain detection."""
        return lambda index: {}

    def _nms(self, prediction: torch.Tensor, params: Params) -> torch.Tensor:
        from ultralytics.utils.nms import non_max_suppression

        return non_max_suppression(
            prediction,
            conf_thres=params.conf,
            iou_thres=params.iou,
            classes=list(params.classes) if params.classes is not None else None,
            max_det=params.max_det,
            nc=len(self.names) if self.extra_columns else 0,  # 0: every column after the box is a class score
            end2end=self.end2end,
            rotated=self.rotated,
        )[0]

    def _detections(self, rows: np.ndarray, boxes: np.ndarray, extra) -> list[dict]:
        """Detections best first; a box that collapses to nothing once clipped to the image is dropped."""
        detections = []
        for index, ((x1, y1, x2, y2), conf, cls) in enumerate(zip(boxes, rows[:, 4], rows[:, 5], strict=True)):
            x1, y1, x2, y2 = _round([x1, y1, x2, y2])
            if x2 <= x1 or y2 <= y1:
                continue
            detection = {
                "class": self.names.get(int(cls), str(int(cls))),
                "class_id": int(cls),
                "confidence": round(float(conf), 4),
                "bbox": [x1, y1, x2, y2],
            }
            detections.append({**detection, **extra(index)})
        detections.sort(key=lambda d: d["confidence"], reverse=True)
        return detections


class SegmentTask(DetectTask):
    """Boxes plus masks: the prototype masks combined per box, traced to outlines, optionally full-size RLE."""

    name = "segment"
    extra_columns = True

    def split(self, raw) -> list:
        if isinstance(raw[0], (list, tuple)):  # .pt models add a second (training) output
            raw = raw[0]
        prediction, protos = raw[0], raw[1]
        return [(prediction[row : row + 1], protos[row]) for row in range(prediction.shape[0])]

    def answer(self, output, item: Input, params: Params) -> dict:
        from ultralytics.utils.ops import process_mask

        prediction, protos = output
        rows = self._nms(prediction, params)
        masks = process_mask(protos, rows[:, 6:], rows[:, :4], item.canvas.shape[:2], upsample=True)
        if len(rows):
            keep = masks.amax((-2, -1)) > 0  # Ultralytics drops a detection whose mask is empty
            rows, masks = rows[keep], masks[keep]
        rows, masks = rows.float().numpy(), masks.numpy()

        def extra(index: int) -> dict:
            found = {"polygons": [_round(polygon) for polygon in mask_polygons(masks[index], item.box)]}
            if params.masks == "rle":
                found["rle"] = rle_encode(mask_to_image(masks[index], item.box))
            return found

        return {"detections": self._detections(rows, unletterbox_boxes(rows[:, :4], item.box), extra)}

    def signals(self, answer: dict, width: int, height: int) -> dict:
        found = super().signals(answer, width, height)
        return {**found, "mask_area": mask_area(answer["detections"], width, height)}


class PoseTask(DetectTask):
    """Boxes plus keypoints, named by the model's ``kpt_names`` when the weights carry them."""

    name = "pose"
    extra_columns = True

    def signals(self, answer: dict, width: int, height: int) -> dict:
        found = super().signals(answer, width, height)
        return {**found, "keypoint_confidence": keypoint_confidence(answer["detections"])}

    def _extra(self, rows: np.ndarray, item: Input):
        count, dims = self.kpt_shape
        names = self.config.kpt_names or ()
        points = rows[:, 6 : 6 + count * dims].reshape(-1, count, dims)
        xy = unletterbox_points(points[..., :2], item.box)

        def extra(index: int) -> dict:
            return {
                "keypoints": [
                    {
                        "name": names[k] if k < len(names) else str(k),
                        "x": round(float(xy[index, k, 0]), 2),
                        "y": round(float(xy[index, k, 1]), 2),
                        "confidence": round(float(points[index, k, 2]), 4) if dims == 3 else None,
                    }
                    for k in range(count)
                ]
            }

        return extra


class ObbTask(DetectTask):
    """Rotated boxes: rotated NMS, then centre, size, angle and corners in original pixels.

    ``bbox`` is the axis-aligned box around the corners, clipped to the image; the rotated
    box itself is not clipped, as in Ultralytics' results.
    """

    name = "obb"
    rotated = True
    extra_columns = True

    def answer(self, output, item: Input, params: Params) -> dict:
        rows = self._nms(output, params).float().numpy()
        xywhr = unletterbox_rotated(np.concatenate([rows[:, :4], rows[:, 6:7]], axis=1), item.box)
        corners = rotated_corners(xywhr)
        enclosing = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        enclosing[:, [0, 2]] = enclosing[:, [0, 2]].clip(0, item.width)
        enclosing[:, [1, 3]] = enclosing[:, [1, 3]].clip(0, item.height)

        def extra(index: int) -> dict:
            cx, cy, w, h = _round(xywhr[index, :4])
            angle = round(float(xywhr[index, 4]), 4)
            return {"obb": {"cx": cx, "cy": cy, "w": w, "h": h, "angle": angle}, "corners": _round(corners[index])}

        return {"detections": self._detections(rows, enclosing, extra)}


class RTDETRTask(DetectTask):
    """RT-DETR detection: the image stretched to a square, queries already selected by the decoder (no NMS).

    Boxes come as normalised centre/size, so they map back by the original width and height,
    as Ultralytics' ``RTDETRPredictor`` does.
    """

    name = "detect"
    kept_side = min  # stretched: both sides must stay >= imgsz

    def prepare(self, rgb: np.ndarray, original: tuple[int, int] | None = None) -> Input:
        size = self.config.imgsz
        width, height = original or (rgb.shape[1], rgb.shape[0])
        square = rgb.shape[:2] == (size, size)
        canvas = rgb if square else cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
        return Input(canvas, width, height, None)

    def answer(self, output, item: Input, params: Params) -> dict:
        from ultralytics.utils.ops import xywh2xyxy

        rows = output[0].float()
        keep = rows[:, 4] > params.conf
        if params.classes is not None:
            keep &= torch.isin(rows[:, 5], torch.tensor(params.classes, dtype=rows.dtype))
        rows = rows[keep][: params.max_det].numpy()
        boxes = xywh2xyxy(rows[:, :4]) * [item.width, item.height, item.width, item.height]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, item.width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, item.height)
        return {"detections": self._detections(rows, boxes, self._extra(rows, item))}


class ClassifyTask(DetectTask):
    """Whole-image classes: Ultralytics' resize-short-side and centre crop, then the top-k probabilities."""

    name = "classify"
    kept_side = min  # the short side is resized to imgsz, then centre-cropped

    def prepare(self, rgb: np.ndarray, original: tuple[int, int] | None = None) -> Input:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        size = self.config.imgsz
        image = F.resize(Image.fromarray(rgb), size, interpolation=InterpolationMode.BILINEAR)
        canvas = np.asarray(F.center_crop(image, [size, size]))
        width, height = original or (rgb.shape[1], rgb.shape[0])
        return Input(canvas, width, height, None)

    def split(self, raw) -> list:
        probs = raw[0] if isinstance(raw, (list, tuple)) else raw
        return [probs[row] for row in range(probs.shape[0])]

    def answer(self, output, item: Input, params: Params) -> dict:
        probs = output.float().numpy()
        top = np.argsort(-probs, kind="stable")[: params.top_k]
        return {
            "classifications": [
                {
                    "class": self.names.get(int(i), str(int(i))),
                    "class_id": int(i),
                    "confidence": round(float(probs[i]), 4),
                }
                for i in top
            ]
        }

    def signals(self, answer: dict, width: int, height: int) -> dict:
        return top_class_signals(answer["classifications"])


TASK_UNITS = {unit.name: unit for unit in (DetectTask, SegmentTask, PoseTask, ObbTask, ClassifyTask)}


def task_unit(config: HandlerConfig) -> type[DetectTask]:
    """The unit that builds this archive's answers: its task's, or RT-DETR's own way of detecting."""
    return RTDETRTask if config.architecture == "rtdetr" else TASK_UNITS[config.task]
