"""What the tests share besides fixtures: paths, memoised packaging, ground truth, contract checks,
and the handler driven the way a TorchServe worker drives it."""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "serving"))  # the handler's modules, as TorchServe sees them inside the .mar

import httpx  # noqa: E402

from drift.offline import answers as answers_of  # noqa: E402
from drift.offline import handler_for  # noqa: E402, F401 (the tests' way to run an archive)
from operations.packaging import Packaged, archive_path, sha256sum  # noqa: E402
from operations.packaging import package as build  # noqa: E402
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


ARCHIVES = Path(tempfile.mkdtemp(prefix="archives-"))  # this run's memo of built archives, by key
atexit.register(shutil.rmtree, ARCHIVES, True)
BUILT: dict[str, Packaged] = {}
COUNTS = {"built": 0, "linked": 0}  # reported at the end of the run (conftest.pytest_terminal_summary)


def package(
    store: Path, version: str, weights: Path | None = None, *, gate_data: Path | None = SAMPLES, **options
) -> Packaged:
    """Package as retraining and the benches do (``operations.packaging.package``, our samples as our model's
    gate set), each distinct archive built once per run and hard-linked into ``store`` after that.

    The memo's key is everything the archive's bytes depend on: the arguments, the weights' bytes, the gate
    set's and reference's files, the config's bytes, and the archive ``<name>_current.mar`` points at (the
    lineage's parent and a reused gate set come from it). A build that would refuse or overwrite (the version
    is already in ``store``) always runs for real; tests of packaging itself call the library directly.
    """
    weights = Path(weights or WEIGHTS[version])
    name = options.get("name", "yolo")
    target = archive_path(store, name, version)
    if target.exists() or options.get("force"):
        return build(weights, version, store, gate_data=gate_data, log=lambda line: None, **options)
    key = memo_key(store, name, version, weights, gate_data, options)
    if key not in BUILT:
        built = build(weights, version, ARCHIVES / key, gate_data=gate_data, log=lambda line: None, **options)
        BUILT[key] = built
        COUNTS["built"] += 1
    else:
        COUNTS["linked"] += 1
    store.mkdir(parents=True, exist_ok=True)
    os.link(BUILT[key].archive, target)
    return dataclasses.replace(BUILT[key], archive=target)


def memo_key(store: Path, name: str, version: str, weights: Path, gate_data: Path | None, options: dict) -> str:
    """A digest of what an archive's bytes depend on (see ``package``)."""
    pointer = store / f"{name}_current.mar"
    facts = {
        "version": version,
        "weights": [str(weights.resolve()), sha256sum(weights)],
        "gate_data": folder_state(gate_data),
        "reference": folder_state(options.get("reference")),
        "config": sha256sum(Path(options["config"])) if "config" in options else None,
        "current": sha256sum(pointer) if pointer.exists() else None,
        "options": {k: str(v) for k, v in sorted(options.items()) if k not in ("reference", "config")},
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def folder_state(path: Path | str | None) -> list | None:
    """Where a gate set or reference is and its files' names, sizes and modification times."""
    if path is None:
        return None
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [str(path), *((str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)]


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
    log = ROOT / "var" / "test-lanes" / f"{label.rsplit('=', 1)[-1]}.log"  # its phases' times, kept when it passes
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(output)
    assert result.returncode == 0, output[-20000:]
    for line in passes:
        assert line in output, output[-20000:]
    assert torn_down in output
    if "stopping the dockerd started here" not in output:  # the engine it used still runs: nothing may be left
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True)
        assert left.returncode == 0 and left.stdout.strip() == "", f"containers left behind: {left.stdout}"
