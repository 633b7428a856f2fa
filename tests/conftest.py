"""Shared fixtures: the real TorchServe + gateway, started once per session on free ports."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "serving"))  # the handler's modules, as TorchServe sees them inside the .mar

import httpx  # noqa: E402
import yaml  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from ts.context import Context, RequestProcessor  # noqa: E402

from scripts.gate_metrics import box_iou as iou  # noqa: E402
from scripts.stack import Stack, free_port, running, start_gateway, stop_service, wait_until  # noqa: E402
from yolo_handler import YoloHandler  # noqa: E402

SAMPLES = ROOT / "samples"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEIGHTS = {
    "1.0": ROOT / "models" / "weights" / "v1.0" / "best.pt",
    "2.0": ROOT / "models" / "weights" / "v2.0" / "best.pt",
}


def package(
    store: Path, version: str, weights: Path | None = None, *extra: str, gate_data: Path | None = SAMPLES
) -> subprocess.CompletedProcess:
    """Run the operator's packaging command exactly as documented (our samples are our model's gate set)."""
    cmd = ["bash", "scripts/package_mar.sh", "--weights", str(weights or WEIGHTS[version]), "--version", version]
    gate = ["--gate-data", str(gate_data)] if gate_data else []
    return subprocess.run([*cmd, "--store", str(store), *gate, *extra], cwd=ROOT, capture_output=True, text=True)


@dataclass
class GroundTruth:
    name: str
    path: Path
    width: int
    height: int
    boxes: list[dict]  # {"class": name, "bbox": [x1, y1, x2, y2]}


def load_ground_truth() -> list[GroundTruth]:
    """samples/ground_truth.json, written by models/make_samples.py."""
    records = json.loads((SAMPLES / "ground_truth.json").read_text())["images"]
    return [
        GroundTruth(
            name,
            SAMPLES / name,
            r["width"],
            r["height"],
            [{"class": d["class"], "bbox": d["bbox"]} for d in r["defects"]],
        )
        for name, r in sorted(records.items())
    ]


def assert_finds_ground_truth(detections: list[dict], truth: GroundTruth, min_iou: float = 0.5) -> None:
    """Every labelled defect is found with the right class at IoU >= min_iou."""
    for expected in truth.boxes:
        best = max((iou(d["bbox"], expected["bbox"]) for d in detections if d["class"] == expected["class"]), default=0)
        assert best >= min_iou, f"{truth.name}: {expected} not found (best IoU {best:.2f}) in {detections}"


def assert_valid_contract(body: dict, width: int, height: int) -> None:
    assert body["status"] == "success"
    assert body["model"]["name"] == "yolo" and body["model"]["version"]
    assert body["image"] == {"width": width, "height": height}
    confidences = [d["confidence"] for d in body["detections"]]
    assert confidences == sorted(confidences, reverse=True)
    for d in body["detections"]:
        x1, y1, x2, y2 = d["bbox"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, d
        assert isinstance(d["class"], str) and isinstance(d["class_id"], int) and 0 <= d["confidence"] <= 1
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


@pytest.fixture(scope="session")
def ground_truth() -> list[GroundTruth]:
    return load_ground_truth()


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A private model store holding yolo_v1.0.mar, built by scripts/package_mar.sh."""
    store = tmp_path_factory.mktemp("model-store")
    result = package(store, "1.0")
    assert result.returncode == 0, result.stdout + result.stderr
    return store


@dataclass
class TestStack(Stack):
    __test__ = False  # a fixture object, not a test class

    @property
    def sample_images(self) -> list[Path]:
        return sorted(SAMPLES.glob("*.jpg"))


@pytest.fixture(scope="session")
def stack(model_store, tmp_path_factory):
    """TorchServe (token auth on) and the gateway, as `make up` runs them, on free ports."""
    instance = TestStack.private(tmp_path_factory.mktemp("run"), model_store)
    with running(instance, "1.0"):
        yield instance


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def extra_gateway(stack, tmp_path):
    """Start another gateway process in front of the session's TorchServe, with extra settings.

    Returns the new gateway's Stack (``.gateway_url``), so a test can also stop it.
    """
    started = []

    def start(**env: str) -> Stack:
        instance = dataclasses.replace(
            stack,
            run_dir=tmp_path / f"gateway{len(started)}",
            gateway_port=free_port(),
            gateway_env={"GATEWAY_TS_KEY_FILE": str(stack.key_file), **env},
        )
        instance.run_dir.mkdir()
        pid = start_gateway(instance)
        started.append(instance)
        live = f"{instance.gateway_url}/health/live"
        wait_until(lambda: answers(live), "extra gateway", 30, pid, instance.log_dir / "gateway.log")
        return instance

    yield start
    for instance in started:
        stop_service(instance, "gateway")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh (make test does)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile per test (empty local storage); uncaught script errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    context.close()
    assert not script_errors, script_errors


def handler_for(archive: Path, tmp_path: Path):
    """The handler of an archive, initialised from its unpacked files the way a TorchServe worker does it."""
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(tmp_path)
    manifest = json.loads((tmp_path / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((tmp_path / "model-config.yaml").read_text())
    context = Context(
        manifest["model"]["modelName"], str(tmp_path), manifest, 1, None, "0.12.0", model_yaml_config=config
    )
    handler = YoloHandler()
    handler.initialize(context)
    return handler


def handler_answers(handler, images: list[Path], headers: dict[str, str] | None = None) -> list[dict]:
    """One batch of image files through the handler's preprocess, inference and postprocess."""
    handler.context.request_processor = [RequestProcessor(headers or {}) for _ in images]
    handler.context.request_ids = {i: f"req-{i}" for i in range(len(images))}
    rows = [{"body": path.read_bytes()} for path in images]
    return handler.postprocess(handler.inference(handler.preprocess(rows)))
