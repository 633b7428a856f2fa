"""What the tests share besides fixtures: paths, the packaging command, ground truth, contract checks,
and the handler driven the way a TorchServe worker drives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "serving"))  # the handler's modules, as TorchServe sees them inside the .mar

import httpx  # noqa: E402

from drift.offline import answers as answers_of  # noqa: E402
from drift.offline import handler_for  # noqa: E402, F401 (the tests' way to run an archive)
from operations.stack import Stack  # noqa: E402
from quality.geometry import box_iou as iou  # noqa: E402
from serving.yolo_contract import answer_problems  # noqa: E402

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
    assert answer_problems(body, width=width, height=height) == []
    assert body["model"]["name"] == "yolo"
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


@dataclass
class TestStack(Stack):
    __test__ = False  # a fixture object, not a test class

    @property
    def sample_images(self) -> list[Path]:
        return sorted(SAMPLES.glob("*.jpg"))


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def metric_total(url: str, name: str) -> float:
    """The sum of a gateway metric's samples whose line starts with ``name`` (a name, or a name and labels)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def handler_answers(handler, images: list[Path], headers: dict[str, str] | None = None) -> list[dict]:
    """One batch of image files through the handler's preprocess, inference and postprocess."""
    return answers_of(handler, [path.read_bytes() for path in images], headers)


def run_container_proof(
    command: list[str], passes: list[str], torn_down: str, label: str, timeout: float = 3600
) -> None:
    """Run a containers/ proof (Compose or Swarm) as `make test` does; every check passed, nothing left running.

    ``passes`` are the lines the proof prints for checks that passed, ``torn_down`` the one it prints once
    its stack is gone, ``label`` the Docker label of its containers. Where the proof stopped the engine it
    started, no container can be left; else none with ``label`` may be.
    """
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    for line in passes:
        assert line in output, output[-20000:]
    assert torn_down in output
    if "stopping the dockerd started here" not in output:  # the engine it used still runs: nothing may be left
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True)
        assert left.returncode == 0 and left.stdout.strip() == "", f"containers left behind: {left.stdout}"
