"""Every Ultralytics task, as a user brings it: package with its own gate set, deploy, query, compare.

For each task a small model built from Ultralytics' YAML and trained on generated data
(``models/train_tasks.py``, committed under ``models/weights/tasks/``) goes the operator's
way: ``package_mar.sh --gate-data`` twice (``pt`` as 1.0, OpenVINO as 1.1), a cold start on
1.0, ``deploy.sh 1.1`` gated on the archive's own labelled set, then ``/predict`` through the
real gateway. Every answer is compared with ``YOLO(weights).predict`` on the same image:
1.0 (pt) to the strict parity targets, 1.1 (OpenVINO) to the exported-format ones.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from playwright.sync_api import expect

from operations.history import read_history
from operations.stack import Stack, running
from quality.parity import EXPORTED_QUERY_CONF, Worst, compare, violations
from tests.helpers import ROOT, SAMPLES, handler_answers, handler_for, package
from tests.test_web_ui import screenshot, upload

sys.path.insert(0, str(ROOT / "models"))

import generate_tasks  # noqa: E402

from quality.ultralytics_answers import reference_answers  # noqa: E402

pytestmark = pytest.mark.integration

TASKS = ("detect", "segment", "pose", "obb", "classify")
TASK_WEIGHTS = ROOT / "models" / "weights" / "tasks"
GATE_METRIC = {"detect": "recall", "segment": "recall", "obb": "recall", "pose": "pck", "classify": "top1"}
# Sizes and aspect ratios the parity images come in; one more is an EXIF-rotated copy.
SIZES = ((320, 240), (480, 480), (256, 400), (640, 360))
REPORTS = ROOT / "reports"


@dataclass
class Served:
    task: str
    stack: Stack
    weights: Path
    imgsz: int
    deploy_output: str


@pytest.fixture(scope="module", params=TASKS)
def served(request, tmp_path_factory) -> Served:
    """One task's model packaged twice, cold-started on 1.0 (pt) and deployed to 1.1 (OpenVINO) with deploy.sh."""
    task = request.param
    weights = TASK_WEIGHTS / task / "best.pt"
    store = tmp_path_factory.mktemp(f"store-{task}")
    for version, model_format in (("1.0", "pt"), ("1.1", "openvino")):  # one worker each: counts are test_models'
        package(store, version, weights, name=task, fmt=model_format, gate_data=gate_set(task), workers=1)
    with zipfile.ZipFile(store / f"{task}_v1.0.mar") as mar:
        imgsz = yaml.safe_load(mar.read("model-config.yaml"))["handler"]["imgsz"]
    stack = Stack.private(tmp_path_factory.mktemp(f"run-{task}"), store, model_name=task)
    with running(stack, "1.0"):
        deployed = deploy(stack, "1.1")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        yield Served(task, stack, weights, imgsz, deployed.stdout)


def gate_set(task: str) -> Path:
    return SAMPLES / "gates" / task


def deploy(stack: Stack, version: str, *extra: str) -> subprocess.CompletedProcess:
    """``bash scripts/deploy.sh`` against this stack, as an operator runs it."""
    where = ["--model", stack.model_name, "--run-dir", str(stack.run_dir), "--model-store", str(stack.model_store)]
    ports = ["--inference-port", str(stack.inference_port), "--management-port", str(stack.management_port)]
    cmd = ["bash", "scripts/deploy.sh", version, *where, *ports, "--drain", "0", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def parity_images(served, tmp_path_factory) -> list[tuple[Path, Path]]:
    return make_parity_images(served.task, tmp_path_factory.mktemp(f"parity-{served.task}"))


def make_parity_images(task: str, folder: Path) -> list[tuple[Path, Path]]:
    """(file sent to the server, upright file given to Ultralytics): several sizes, and one EXIF-rotated.

    PNG, so both sides decode the very same pixels; the rotated one carries EXIF
    orientation 6 and must come back upright, sized as a person sees it.
    """
    pairs = []
    for index, size in enumerate(SIZES):
        bgr, _ = generate_tasks.render_image(task, size, seed=7, split="test", index=index)
        path = folder / f"{task}_{size[0]}x{size[1]}.png"
        cv2.imwrite(str(path), bgr)
        pairs.append((path, path))
    upright = pairs[0][1]
    rotated = folder / f"{task}_exif6.png"
    stored = Image.open(upright).transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    stored.save(rotated, format="PNG", exif=exif)
    pairs.append((rotated, upright))
    return pairs


def post(stack: Stack, path: Path, **params) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(f"{stack.gateway_url}/predict", params=params, files={"file": handle}, timeout=60)


def test_deploy_gates_each_version_on_its_own_labelled_set(served):
    assert "quality gate passed" in served.deploy_output
    entry = read_history(served.stack)[-1]
    assert (entry["action"], entry["version"], entry["result"], entry["gated"]) == ("deploy", "1.1", "ok", True)
    assert entry["gate"]["task"] == served.task and entry["gate"]["metric"] == GATE_METRIC[served.task]
    assert entry["gate"]["value"] >= entry["gate"]["threshold"] > 0


def test_served_answers_match_ultralytics(served, parity_images):
    """Both archives, every image, against YOLO(weights).predict: the worst case must meet the targets."""
    upright = [reference_path for _, reference_path in parity_images]
    expected = reference_answers(served.weights, upright, served.imgsz)
    worst = {"pt": Worst(), "openvino": Worst()}
    lowered = {} if served.task == "classify" else {"conf": str(EXPORTED_QUERY_CONF)}
    for (sent, _), truth in zip(parity_images, expected, strict=True):
        for model_format, params in (("pt", {"version": "1.0"}), ("openvino", lowered)):
            response = post(served.stack, sent, **params)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["task"] == served.task
            assert body["model"]["version"] == params.get("version", "1.1")
            assert body["image"] == truth["image"], sent.name
            found = compare(served.task, body, truth, strict=model_format == "pt")
            problems = violations(served.task, found, strict=model_format == "pt")
            assert not problems, f"{served.task} {model_format} {sent.name}: {problems}"
            worst[model_format].merge(found)
    assert worst["pt"].pairs > 0, "no result to compare: the model predicts nothing on the parity images"
    for model_format, found in worst.items():
        record_worst(served.task, model_format, found)


def record_worst(task: str, model_format: str, worst: Worst) -> None:
    """Keep the worst case for REPORT.md (``python -m quality.parity`` prints the table)."""
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / f"parity-{task}-{model_format}.json").write_text(json.dumps(vars(worst), indent=1))


@pytest.mark.parametrize("model_format", ["onnx", "torchscript"])
@pytest.mark.parametrize("task", TASKS)
def test_the_other_export_formats_match_ultralytics(task, model_format, tmp_path):
    """ONNX and TorchScript archives of each task, in TorchServe's own Context, to the exported-format targets."""
    weights = TASK_WEIGHTS / task / "best.pt"
    package(tmp_path / "store", "1.0", weights, name=task, fmt=model_format, gate_data=None)
    handler = handler_for(tmp_path / "store" / f"{task}_v1.0.mar", tmp_path / "model-dir")
    pairs = make_parity_images(task, tmp_path)
    lowered = {} if task == "classify" else {"X-Yolo-Conf": str(EXPORTED_QUERY_CONF)}
    served = handler_answers(handler, [sent for sent, _ in pairs], lowered)
    expected = reference_answers(weights, [upright for _, upright in pairs], handler.config.imgsz)
    worst = Worst()
    for body, truth, (sent, _) in zip(served, expected, pairs, strict=True):
        assert body["status"] == "success" and body["image"] == truth["image"], (sent.name, body)
        found = compare(task, body, truth, strict=False)
        assert not violations(task, found, strict=False), f"{task} {model_format} {sent.name}: {found}"
        worst.merge(found)
    assert worst.pairs > 0
    record_worst(task, model_format, worst)


def test_masks_as_rle_match_their_outlines(served, parity_images):
    if served.task != "segment":
        pytest.skip("RLE masks belong to segmentation models")
    sent = parity_images[1][0]
    body = post(served.stack, sent, masks="rle").json()
    assert body["detections"], body
    from quality.geometry import mask_iou, rasterise
    from yolo_geometry import rle_decode

    for det in body["detections"]:
        mask = rle_decode(det["rle"])
        assert mask.shape == (body["image"]["height"], body["image"]["width"])
        assert mask_iou(mask, rasterise(det["polygons"], *mask.shape[::-1])) > 0.8


def test_a_parameter_of_another_task_is_a_422_naming_the_task(served, parity_images):
    sent = parity_images[0][0]
    foreign = {"conf": "0.5"} if served.task == "classify" else {"top_k": "3"}
    response = post(served.stack, sent, **foreign)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "parameter_not_applicable"
    assert served.task in error["message"] and next(iter(foreign)) in error["message"]


def test_models_lists_the_task_and_classes(served):
    from ultralytics import YOLO

    body = httpx.get(f"{served.stack.gateway_url}/models/{served.task}", timeout=30).json()
    assert body["task"] == served.task and body["default_version"] == "1.1"
    assert {int(k): v for k, v in body["classes"].items()} == YOLO(str(served.weights)).names
    assert {v["version"]: v["task"] for v in body["versions"]} == {"1.0": served.task, "1.1": served.task}


def test_annotated_image_draws_the_task(served, parity_images):
    sent = parity_images[0][0]
    plain = post(served.stack, sent)
    drawn = post(served.stack, sent, format="image")
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/jpeg"
    picture = np.asarray(Image.open(io.BytesIO(drawn.content)).convert("RGB"), dtype=np.int16)
    original = np.asarray(Image.open(sent).convert("RGB"), dtype=np.int16)
    assert picture.shape == original.shape
    if plain.json().get("detections") or plain.json().get("classifications"):
        assert np.abs(picture - original).max() > 100, "nothing was drawn"


def _visible(keypoint: dict) -> bool:
    return keypoint["confidence"] is None or keypoint["confidence"] >= 0.5


# What the page's canvas counts, per task, from the API's answer for the same image.
DRAWN = {
    "detect": lambda body: {"boxCount": len(body["detections"])},
    "segment": lambda body: {"polygonCount": sum(len(d["polygons"]) for d in body["detections"])},
    "pose": lambda body: {"keypointCount": sum(map(_visible, (k for d in body["detections"] for k in d["keypoints"])))},
    "obb": lambda body: {"rotatedCount": len(body["detections"])},
    "classify": lambda body: {"classCount": len(body["classifications"])},
}


def test_web_page_draws_what_the_task_answers(served, parity_images, page):
    page.goto(f"{served.stack.gateway_url}/")
    expect(page.locator("#models-status")).to_contain_text(f"({served.task})")
    expect(page.locator("#conf")).to_be_visible(visible=served.task != "classify")
    sent = parity_images[1][0]
    assert upload(page, sent) == "done"
    body = post(served.stack, sent).json()
    expected = DRAWN[served.task](body)
    assert next(iter(expected.values())) > 0, f"the {served.task} model found nothing to draw: {body}"
    counts = page.locator("#overlay").evaluate("c => ({...c.dataset})")
    assert {key: int(counts[key]) for key in expected} == expected
    rows = len(body.get("detections") or body.get("classifications"))
    assert page.locator("#detections tbody tr").count() == rows
    screenshot(page, f"task-{served.task}.png")
