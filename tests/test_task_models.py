"""The committed per-task models: Ultralytics' predictions in the contract's JSON, and each model passing its gate."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from models import generate_tasks as gt  # noqa: E402
from models.train_tasks import GATE_COUNT, MODELS_DIR, ROOT  # noqa: E402
from quality import gate_sets  # noqa: E402
from quality.tasks import METRICS, task_of  # noqa: E402
from quality.ultralytics_answers import reference_answers, to_answer  # noqa: E402

WEIGHTS = MODELS_DIR / "weights" / "tasks"
GATES = ROOT / "samples" / "gates"
TRAINED = ("detect", "segment", "pose", "obb", "classify")


def trained(task: str) -> dict:
    return yaml.safe_load((WEIGHTS / task / "training.json").read_text())


@pytest.fixture(scope="module", params=TRAINED)
def task_model(request):
    """(task, YOLO model, one gate image, its Ultralytics Results) for each committed task model."""
    from ultralytics import YOLO

    task = request.param
    yolo = YOLO(str(WEIGHTS / task / "best.pt"))
    _, items = gate_sets.load_gate_set(GATES / task)
    image = items[0]["image"]
    (result,) = yolo.predict(str(image), imgsz=trained(task)["imgsz"], conf=0.25, verbose=False)
    return task, yolo, items[0], result


def test_models_are_small_and_of_their_task(task_model):
    task, yolo, _, _ = task_model
    assert yolo.task == task
    assert (WEIGHTS / task / "best.pt").stat().st_size < 15_000_000
    assert list(yolo.names.values()) == list(gt.CLASSES[task])


def test_answer_has_the_contract_shape_and_matches_ultralytics(task_model):
    task, yolo, item, result = task_model
    body = to_answer(result, yolo.model, task)
    assert body["status"] == "success" and body["task"] == task
    assert body["image"] == {"width": item["width"], "height": item["height"]}
    if task == "classify":
        ranked = body["classifications"]
        assert len(ranked) == min(5, len(gt.CLASSES[task]))
        assert [c["confidence"] for c in ranked] == sorted((c["confidence"] for c in ranked), reverse=True)
        assert ranked[0]["class_id"] == int(result.probs.top1)
        assert ranked[0]["class"] == result.names[ranked[0]["class_id"]]
        return
    detections = body["detections"]
    assert detections, f"{task}: no detection on {item['image'].name}"
    assert [d["confidence"] for d in detections] == sorted((d["confidence"] for d in detections), reverse=True)
    boxes = result.obb if task == "obb" else result.boxes
    best = int(boxes.conf.argmax())
    top = detections[0]
    assert top["class"] == result.names[int(boxes.cls[best])]
    np.testing.assert_allclose(top["bbox"], boxes.xyxy[best].numpy(), atol=0.006)
    x1, y1, x2, y2 = top["bbox"]
    assert 0 <= x1 < x2 <= item["width"] and 0 <= y1 < y2 <= item["height"]
    if task == "segment":
        (outline,) = top["polygons"]
        np.testing.assert_allclose(outline, result.masks.xy[best], atol=0.006)
    if task == "pose":
        assert [k["name"] for k in top["keypoints"]] == list(gt.KPT_NAMES)
        np.testing.assert_allclose([[k["x"], k["y"]] for k in top["keypoints"]], result.keypoints.xy[best], atol=0.006)
    if task == "obb":
        np.testing.assert_allclose(top["corners"], result.obb.xyxyxyxy[best].numpy(), atol=0.006)
        o = top["obb"]
        np.testing.assert_allclose([o["cx"], o["cy"], o["w"], o["h"]], result.obb.xywhr[best, :4], atol=0.006)
        np.testing.assert_allclose(o["angle"], float(result.obb.xywhr[best, 4]), atol=6e-5)


def test_pose_checkpoint_carries_keypoint_names():
    from ultralytics import YOLO

    assert YOLO(str(WEIGHTS / "pose" / "best.pt")).model.kpt_names == {0: list(gt.KPT_NAMES)}


@pytest.mark.parametrize("task", TRAINED)
def test_each_committed_model_passes_its_committed_gate(task):
    spec = gate_sets.gate_spec(GATES / task)
    loaded_task, items = gate_sets.load_gate_set(GATES / task)
    assert (loaded_task, spec["metric"]) == (task, METRICS[task])
    assert len(items) == GATE_COUNT
    answers = reference_answers(WEIGHTS / task / "best.pt", [i["image"] for i in items], imgsz=trained(task)["imgsz"])
    measured = task_of(task).gate_metric(items, answers)
    assert measured == pytest.approx(spec["measured"], abs=1e-4)  # the gate was set from exactly this
    assert measured >= spec["threshold"] > 0
