"""Every YOLO generation (v3u to YOLO26) and RT-DETR: packaged, served by the handler, equal to Ultralytics.

Each model is built from Ultralytics' own YAML and saved untrained: a random model still
answers deterministically, so the five highest-scoring results of the archive (inside
TorchServe's own ``Context``) must equal ``YOLO(weights).predict``'s, whether the head is
NMS-based (v3u, v5u, v8, v9, 11, 12), end-to-end (v10, 26) or a DETR decoder. What cannot
be served is refused by packaging with the reason.
"""

from __future__ import annotations

import sys

import cv2
import pytest

from operations.packaging import PackagingError
from quality.parity import compare, violations
from tests.helpers import ROOT, SAMPLES, handler_answers, handler_for, package

sys.path.insert(0, str(ROOT / "models"))

from quality.ultralytics_answers import reference_answers  # noqa: E402

pytestmark = pytest.mark.packaging

GENERATIONS = {
    "v3u": "yolov3-tinyu.yaml",
    "v5u": "yolov5nu.yaml",
    "v8": "yolov8n.yaml",
    "v9": "yolov9t.yaml",
    "v10": "yolov10n.yaml",
    "11": "yolo11n.yaml",
    "12": "yolo12n.yaml",
    "26": "yolo26n.yaml",
    "rtdetr": "rtdetr-l.yaml",
}
IMGSZ = 160  # small: the point is the head's output and its mapping back, not accuracy
TOP = 5


def untrained(yaml_name: str, path):
    """A model built from the YAML, its biases spread at random (fixed seed) so its scores do not tie.

    Freshly initialised heads give every anchor the same score; any two thread counts
    would then order those ties differently, which says nothing about the serving path.
    Heads without DFL (YOLO26) regress box sides directly: their last box bias is raised
    so the untrained boxes have positive sides, as a trained head's do.
    """
    import torch
    from ultralytics import RTDETR, YOLO

    torch.manual_seed(0)
    model = (RTDETR if yaml_name.startswith("rtdetr") else YOLO)(yaml_name)
    head = len(model.model.model) - 1
    with torch.no_grad():
        for name, parameter in model.model.named_parameters():
            if name.endswith("bias") and parameter.ndim == 1:
                parameter.add_(torch.randn_like(parameter) * 2.0)
            if name.startswith((f"model.{head}.cv2.", f"model.{head}.one2one_cv2.")) and name.endswith("2.bias"):
                parameter.add_(3.0)  # box distances > 0 as in a trained head (a no-op where a DFL softmax follows)
    model.save(str(path))
    return path


def lossless_copies(images: list, folder) -> list:
    """PNG copies, so the handler (Pillow) and Ultralytics (OpenCV) decode the very same pixels.

    An untrained model's scores nearly tie; two JPEG decoders' last-bit differences would
    reorder its top results, which says nothing about the serving path.
    """
    copies = []
    for image in images:
        copy = folder / f"{image.stem}.png"
        cv2.imwrite(str(copy), cv2.imread(str(image)))
        copies.append(copy)
    return copies


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_each_generation_is_served_as_ultralytics_predicts(generation, tmp_path):
    weights = untrained(GENERATIONS[generation], tmp_path / f"{generation}.pt")
    store = tmp_path / "store"
    package(store, "1.0", weights, name=f"gen{generation}", fmt="pt", imgsz=IMGSZ, gate_data=None)
    handler = handler_for(store / f"gen{generation}_v1.0.mar", tmp_path / "model-dir")
    images = lossless_copies([SAMPLES / "mixed_01.jpg", SAMPLES / "stain_01.jpg"], tmp_path)
    served = handler_answers(handler, images, {"X-Yolo-Conf": "0.0", "X-Yolo-Max-Det": str(TOP)})
    expected = reference_answers(weights, images, IMGSZ, conf=0.0, max_det=TOP)
    for body, truth, image in zip(served, expected, images, strict=True):
        assert body["status"] == "success" and body["task"] == "detect", body
        assert len(body["detections"]) == TOP
        found = compare("detect", body, truth, strict=True)
        assert not violations("detect", found, strict=True), (generation, image.name, found)


def test_what_cannot_be_served_is_refused_with_the_reason(tmp_path):
    from ultralytics import YOLO

    semantic = tmp_path / "semantic.pt"
    YOLO("yolo26n-sem.yaml").save(str(semantic))
    with pytest.raises(PackagingError, match="'semantic' model.*detect, segment, pose, obb, classify"):
        package(tmp_path, "1.0", semantic, name="sem", gate_data=None)
    assert not list(tmp_path.glob("*.mar"))
