"""What a set of Ultralytics weights says about itself: the one reader of weight facts.

Packaging records these facts in an archive's model config (how the handler knows what to
answer); the captures' export labels with them (``retraining.captured``). Weights the
handler cannot serve are refused here, saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quality.tasks import task_of
from serving.yolo_contract import TASKS

DEFAULT_IMGSZ = 640  # when the weights record no training size


class WeightsError(ValueError):
    """Weights that do not load, or that the handler cannot serve; the message names the file and why."""


@dataclass(frozen=True)
class WeightFacts:
    """Task, class names, keypoint names, image size and architecture, read from the weights."""

    task: str
    imgsz: int  # the size asked for, else the one the weights were trained at, else DEFAULT_IMGSZ
    names: dict[int, str]
    kpt_names: list[str] | None
    architecture: str  # "rtdetr" or "yolo": how the handler prepares the input and reads the output


def load_weights(weights: Path):
    """The Ultralytics model of ``weights`` (RT-DETR's own class for RT-DETR weights); WeightsError when it
    does not load or is no model the handler serves."""
    from ultralytics import RTDETR, YOLO

    try:
        model = YOLO(str(weights))
        if type(model.model).__name__.startswith("RTDETR"):
            model = RTDETR(str(weights))  # its own predictor: a stretched input and no NMS
    except Exception as exc:  # any loader failure means "not usable weights"
        raise WeightsError(f"{weights} does not load as Ultralytics weights: {exc}") from exc
    if model.task not in TASKS:
        raise WeightsError(f"{weights} is a {model.task!r} model; the handler serves {', '.join(TASKS)} weights.")
    if type(model.model).__name__.startswith(("YOLOE", "World")):
        raise WeightsError(
            f"{weights} is an open-vocabulary {type(model.model).__name__}; set its classes and save it as a "
            "plain model first (model.set_classes(...); model.save(...)), or export it, to serve it."
        )
    return model


def weight_facts(model, imgsz: int | None = None) -> WeightFacts:
    """The facts of a model ``load_weights`` returned; ``imgsz`` overrides the trained size."""
    trained = model.ckpt.get("train_args", {}).get("imgsz") if isinstance(getattr(model, "ckpt", None), dict) else None
    size = int(imgsz or (trained if isinstance(trained, int) else None) or DEFAULT_IMGSZ)
    if size % 32:
        raise WeightsError(f"image size must be a multiple of 32, got {size}")
    architecture = "rtdetr" if type(model.model).__name__.startswith("RTDETR") else "yolo"
    names = {int(k): str(v) for k, v in model.names.items()}
    kpt_names = _keypoint_names(model) if task_of(model.task).keypoints else None
    return WeightFacts(model.task, size, names, kpt_names, architecture)


def read_weight_facts(weights: Path, imgsz: int | None = None) -> WeightFacts:
    """Load ``weights`` and read their facts."""
    return weight_facts(load_weights(weights), imgsz)


def _keypoint_names(model) -> list[str] | None:
    """The names of the keypoints when the weights carry them (``kpt_names`` of the training data)."""
    names = getattr(model.model, "kpt_names", None)
    if isinstance(names, dict):  # Ultralytics keeps them per class; one skeleton is served
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if names else None
