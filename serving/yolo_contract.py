"""The contract everything derives from: tasks, request parameters and limits, names, the answer's shape.

Shipped in every .mar beside the handler (imported there as ``yolo_contract``) and copied into
the gateway image (imported as ``serving.yolo_contract``); packaging, the gateway, the
operations code and the tests read it from here, so a task, a parameter or a limit is written
once. Plain Python with no third-party import: the gateway image has no torch.
"""

from __future__ import annotations

import re

TASKS = ("detect", "segment", "pose", "obb", "classify")
FORMATS = ("pt", "torchscript", "onnx", "openvino")  # what an archive may carry (package_mar.sh --format)

# Request parameters: sent to the gateway as query parameters, to the handler as X-Yolo-* headers.
HEADER_PREFIX = "x-yolo-"
BOX_PARAMETERS = ("conf", "iou", "max_det", "classes")
TASK_PARAMETERS = {  # which parameters each task takes; any other one is refused (422), never ignored
    "detect": BOX_PARAMETERS,
    "segment": (*BOX_PARAMETERS, "masks"),
    "pose": BOX_PARAMETERS,
    "obb": BOX_PARAMETERS,
    "classify": ("top_k",),
}
MASK_FORMATS = ("polygon", "rle")
MAX_DET_LIMIT = 1000
TOP_K_LIMIT = 1000
CLASSES_PATTERN = r"^[A-Za-z0-9_\- ]+(,[A-Za-z0-9_\- ]+)*$"  # class names or ids, comma-separated

# A model name is also a URL path segment and a folder name; a version is 1, 1.0 or 1.0.2.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
VERSION_PATTERN = r"^\d+(\.\d+){0,2}$"
NAME_RE = re.compile(NAME_PATTERN)
VERSION_RE = re.compile(VERSION_PATTERN)


def version_order(version: str) -> list[int]:
    """Sort key of a version: 1.10 comes after 1.9."""
    return [int(part) for part in version.split(".")]


# Drift signals (serving/yolo_signals.py computes them, drift/ watches them): the input tier describes the
# picture and is a warning; every other signal describes the answer and is critical. Class mix travels as
# ``class_mix:<class name>`` counts of the classes present.
INPUT_SIGNALS = ("luma", "contrast", "sharpness", "saturation", "blockiness", "aspect")
CLASS_MIX = "class_mix:"
DRIFT_TIERS = {"input": "warning", "output": "critical"}
DRIFT_REFERENCE_FILE = "drift-reference.json"  # in an archive, beside the model (package_mar.sh --reference)


def signal_tier(signal: str) -> str:
    """``input`` (a warning: the pictures changed) or ``output`` (critical: the answers changed)."""
    return "input" if signal in INPUT_SIGNALS else "output"


# Where each task's answer lists what it found: located things (detections, each with a box) or ranked classes.
TASK_ITEMS = {"detect": "detections", "segment": "detections", "pose": "detections", "obb": "detections",
              "classify": "classifications"}  # fmt: skip
# What each task's detections carry besides class, class_id, confidence and bbox.
TASK_FIELDS = {"detect": (), "segment": ("polygons",), "pose": ("keypoints",), "obb": ("obb", "corners")}


def items_key(task: str | None) -> str:
    """Where an answer of ``task`` lists what it found: ``classifications`` for a classifier, else ``detections``."""
    return TASK_ITEMS.get(task, "detections")


def locates(task: str | None) -> bool:
    """Whether an answer of ``task`` lists located things (detections, each with a box), not ranked classes."""
    return items_key(task) == "detections"


def answer_task(body: dict) -> str | None:
    """The task an answer is of: the one it names, else a classifier's when it lists classifications."""
    return body.get("task") or ("classify" if "classifications" in body else None)


def answer_items(body: dict) -> list[dict]:
    """What a successful answer found, best first: a classifier's classes, any other task's detections
    ([] when it found nothing). An answer without ``task`` is read by the list it carries."""
    return body.get(items_key(answer_task(body))) or []


def answer_found(body: dict) -> list[dict]:
    """What an answer counts as found (metrics, capture rules, drift's class mix): every detection, or a
    classifier's top class alone."""
    items = answer_items(body)
    return items if locates(answer_task(body)) else items[:1]


def error_body(code: str, message: str) -> dict:
    """The one shape of every error answer, the handler's, the gateway's and a release's alike."""
    return {"status": "error", "error": {"code": code, "message": message}}


def answer_problems(
    body: dict, version: str | None = None, width: int | None = None, height: int | None = None
) -> list[str]:
    """What is wrong with a successful answer's shape, whatever its task; empty when it keeps the contract.

    ``version``, ``width`` and ``height``, when given, must be what the answer says it was
    (the version that answered, the upright image's size).
    """
    if body.get("status") != "success":
        return [f"status {body.get('status')!r}: {body.get('error')}"]
    problems = []
    task = body.get("task")
    if task not in TASKS:
        problems.append(f"task {task!r} is not one of {', '.join(TASKS)}")
    model = body.get("model") if isinstance(body.get("model"), dict) else {}
    if not model.get("name") or not model.get("version"):
        problems.append(f"model {body.get('model')!r} lacks a name or a version")
    elif version is not None and model["version"] != version:
        problems.append(f"answered as version {model['version']}, not {version}")
    image = body.get("image")
    if not isinstance(image, dict) or not all(
        isinstance(image.get(k), int) and image[k] > 0 for k in ("width", "height")
    ):
        return [*problems, f"image size {image!r} is not a positive width and height"]
    if width is not None and height is not None and image != {"width": width, "height": height}:
        problems.append(f"image size {image} instead of {width}x{height}")
    key = items_key(task)
    items = body.get(key)
    if not isinstance(items, list) or (not locates(task) and not items):
        return [*problems, f"a {task!r} answer without a {key} list"]
    confidences = []
    for item in items:
        problems += _item_problems(item, task, image["width"], image["height"])
        confidences.append(item.get("confidence") if isinstance(item, dict) else None)
    if all(isinstance(c, (int, float)) for c in confidences) and confidences != sorted(confidences, reverse=True):
        problems.append(f"{key} are not ordered best first: {confidences}")
    return problems


def _item_problems(item: object, task: str, width: int, height: int) -> list[str]:
    if not isinstance(item, dict):
        return [f"{item!r} is not an object"]
    problems = []
    if not isinstance(item.get("class"), str) or not isinstance(item.get("class_id"), int) or item["class_id"] < 0:
        problems.append(f"class/class_id missing or of the wrong type: {item}")
    confidence = item.get("confidence")
    if not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
        problems.append(f"confidence out of range: {item}")
    if not locates(task):
        return problems
    bbox = item.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return [*problems, f"bbox is not four numbers: {item}"]
    x1, y1, x2, y2 = bbox
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        problems.append(f"detection out of bounds: {item}")
    missing = [name for name in TASK_FIELDS.get(task, ()) if item.get(name) is None]
    if missing:
        problems.append(f"a {task} detection without {', '.join(missing)}: {item}")
    return problems
