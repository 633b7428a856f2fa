"""scripts/package_mar.sh: what an operator runs to turn weights into a versioned archive."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from operations.archives import archive_lineage, extract_gate_set, extract_source_weights
from quality.gate_sets import gate_spec, load_gate_set
from tests.helpers import ROOT, SAMPLES, WEIGHTS, package

pytestmark = pytest.mark.packaging


def test_help_lists_the_options():
    result = subprocess.run(["bash", "scripts/package_mar.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--weights", "--version", "--name", "--force", "--gate-data", "--gate-threshold", "--train-data"):
        assert option in result.stdout


def test_builds_a_versioned_archive_and_reports_it(tmp_path):
    result = package(tmp_path, "1.0", None, "--train-data", "samples/data.yaml")
    assert result.returncode == 0, result.stderr
    archive = tmp_path / "yolo_v1.0.mar"
    assert f"archive: {archive}" in result.stdout
    assert re.search(r"^version: 1\.0$", result.stdout, re.M)
    digest = re.search(r"^sha256:\s+([0-9a-f]{64})$", result.stdout, re.M).group(1)
    assert digest == hashlib.sha256(archive.read_bytes()).hexdigest()

    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
    handler_files = {path.name for path in (ROOT / "serving").glob("yolo_*.py")}  # every module the handler has
    assert {manifest["model"]["serializedFile"], *handler_files} <= names
    assert "model-config.yaml" in names and config["handler"]["format"] == "openvino"
    assert config["handler"]["task"] == "detect" and config["handler"]["architecture"] == "yolo"
    # the gate set in the archive's one layout: the samples' images and labels, nothing else of the folder
    gate = {n for n in names if n.startswith("gate/")}
    assert gate == {"gate/gate.yaml", "gate/data.yaml"} | {
        f"gate/{kind}/{path.stem}{suffix}"
        for path in SAMPLES.glob("*.jpg")
        for kind, suffix in (("images", ".jpg"), ("labels", ".txt"))
    }
    assert "gate set ok: " in result.stdout and "(task detect, 6 images, threshold 0.85)" in result.stdout
    assert re.search(r"^gate:\s+\S*samples$", result.stdout, re.M)
    assert manifest["model"]["modelName"] == "yolo" and manifest["model"]["modelVersion"] == "1.0"
    assert config["handler"]["imgsz"] % 32 == 0 and config["batchSize"] >= 1

    # lineage: besides the model, handler, config and gate set, only the source weights and lineage.json
    served = {
        n for n in names if n.startswith("model_openvino_model") or n in ("metadata.yaml", "MAR-INF/MANIFEST.json")
    }
    assert names - gate - served - handler_files - {"model-config.yaml"} == {"lineage.json", "source/weights.pt"}
    with zipfile.ZipFile(archive) as mar:
        assert mar.getinfo("source/weights.pt").file_size == WEIGHTS["1.0"].stat().st_size
    lineage = archive_lineage(archive)
    assert lineage == {
        "train_data": str(ROOT / "samples" / "data.yaml"),
        "weights_sha256": hashlib.sha256(WEIGHTS["1.0"].read_bytes()).hexdigest(),
        "packaged_from": str(WEIGHTS["1.0"]),
        "parent": None,
        "source_weights": "source/weights.pt",
    }
    assert "lineage: parent none, train data " + str(ROOT / "samples" / "data.yaml") in result.stdout
    weights = extract_source_weights(archive, tmp_path / "out")
    assert weights == tmp_path / "out" / "yolo_v1.0.pt" and weights.read_bytes() == WEIGHTS["1.0"].read_bytes()


def test_never_overwrites_a_version_without_force(tmp_path):
    assert package(tmp_path, "1.0").returncode == 0
    archive = tmp_path / "yolo_v1.0.mar"
    before = archive.read_bytes()
    again = package(tmp_path, "1.0", WEIGHTS["2.0"])
    assert again.returncode != 0
    assert "exists" in again.stderr and "--force" in again.stderr
    assert archive.read_bytes() == before
    forced = package(tmp_path, "1.0", WEIGHTS["2.0"], "--force")
    assert forced.returncode == 0, forced.stderr
    assert archive.read_bytes() != before


def test_broken_weights_are_refused_before_packaging(tmp_path):
    bogus = tmp_path / "broken.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = package(tmp_path, "9.0", bogus)
    assert result.returncode != 0
    assert "does not load" in result.stderr
    assert not list(tmp_path.glob("*.mar"))


def test_a_handler_key_the_handler_does_not_know_is_refused_by_name(tmp_path):
    """The worker would refuse it when it loads; packaging says so first, naming the key and the file."""
    config = tmp_path / "typo.yaml"
    template = (ROOT / "serving" / "model-config.yaml").read_text()
    config.write_text(template.replace("  conf: 0.25", "  confidence: 0.25"))
    result = package(tmp_path, "1.0", WEIGHTS["1.0"], "--config", str(config))
    assert result.returncode != 0
    assert f"error: {config}: handler section: unknown handler key 'confidence'" in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.mar"))


def test_bad_version_and_missing_weights_are_refused(tmp_path):
    assert "version must look like" in package(tmp_path, "v1", WEIGHTS["1.0"]).stderr
    assert "not found" in package(tmp_path, "1.1", tmp_path / "nope.pt").stderr


def test_a_gate_set_must_fit_the_weights(tmp_path):
    other_task = package(tmp_path, "1.0", gate_data=ROOT / "samples" / "gates" / "segment")
    assert other_task.returncode != 0 and "is for a segment model; the weights are detect" in other_task.stderr
    other_classes = package(tmp_path, "1.0", gate_data=ROOT / "samples" / "gates" / "detect")
    assert other_classes.returncode != 0 and "labels classes" in other_classes.stderr
    assert "bolt" in other_classes.stderr
    assert not list(tmp_path.glob("*.mar"))


def ultralytics_gate_set(root: Path) -> Path:
    """Our samples laid out as Ultralytics lays out a dataset: data.yaml with path and a val split, no gate.yaml."""
    for kind, source, pattern in (("images", SAMPLES, "*.jpg"), ("labels", SAMPLES / "labels", "*.txt")):
        (root / kind / "val").mkdir(parents=True)
        for path in source.glob(pattern):
            shutil.copy(path, root / kind / "val")
    names = yaml.safe_load((SAMPLES / "data.yaml").read_text())["names"]
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val", "names": names})
    )
    return root


def gate_files(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as mar:
        return {n: mar.read(n) for n in mar.namelist() if n.startswith("gate/")}


def test_an_ultralytics_gate_set_needs_no_gate_yaml_and_the_next_version_reuses_it(tmp_path):
    source, store = ultralytics_gate_set(tmp_path / "parts"), tmp_path / "store"
    refused = package(store, "1.0", None, "--format", "pt", gate_data=source)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert (
        f"error: gate set {source} has no threshold: add --gate-threshold 0.5 or write threshold: 0.5 in "
        f"{source}/gate.yaml" in refused.stderr
    )
    built = package(store, "1.0", None, "--format", "pt", "--gate-threshold", "0.3", gate_data=source)
    assert built.returncode == 0, built.stderr
    assert f"gate set ok: {source} (task detect, 6 images, threshold 0.3)" in built.stdout
    first = store / "yolo_v1.0.mar"
    gate = extract_gate_set(first, tmp_path / "unpacked")
    assert gate_spec(gate) == {
        "task": "detect",
        "task_from": "weights",
        "metric": "recall",
        "threshold": 0.3,
        "threshold_from": "--gate-threshold",
        "source": str(source),
    }
    task, items = load_gate_set(gate)  # as a deploy reads it
    assert task == "detect" and len(items) == 6 and sum(len(i["objects"]) for i in items) == 9
    assert archive_lineage(first)["source_weights"] == "model.pt"  # a .pt archive's model is its source weights
    assert extract_source_weights(first, tmp_path).read_bytes() == WEIGHTS["1.0"].read_bytes()

    os.symlink(first.name, store / "yolo_current.mar")  # as deploy.sh and `stack set-current` leave it
    reused = package(store, "1.1", WEIGHTS["2.0"], "--format", "pt", gate_data=None)
    assert reused.returncode == 0, reused.stderr
    assert "gate set: reusing the one in yolo_v1.0.mar (task detect, 6 images, threshold 0.3)" in reused.stdout
    assert re.search(r"^gate:\s+reused from yolo_v1\.0\.mar$", reused.stdout, re.M)
    assert gate_files(store / "yolo_v1.1.mar") == gate_files(first)
    assert archive_lineage(store / "yolo_v1.1.mar")["parent"] == "1.0"

    other_classes = package(
        store, "1.2", ROOT / "models" / "weights" / "tasks" / "detect" / "best.pt", "--format", "pt", gate_data=None
    )
    assert other_classes.returncode == 0, other_classes.stderr
    assert (
        "gate set: not reusing the one in yolo_v1.0.mar: its classes ['dent', 'scratch', 'stain'] are not the "
        "weights' ['bolt', 'nut', 'washer']" in other_classes.stdout
    )
    assert "gate:    none (deploy needs --no-gate)" in other_classes.stdout
    assert gate_files(store / "yolo_v1.2.mar") == {}


def test_what_is_missing_from_a_gate_set_or_the_training_data_is_named(tmp_path):
    source = ultralytics_gate_set(tmp_path / "parts")
    (source / "images" / "val").rename(source / "images" / "valid")
    result = package(tmp_path, "1.0", None, "--format", "pt", "--gate-threshold", "0.3", gate_data=source)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        f"error: gate set {source} is unusable: {source}/data.yaml: val: images/val is {source}/images/val, which "
        "does not exist; put the validation images there or point val: at their folder" in result.stderr
    )
    nowhere = tmp_path / "nowhere.yaml"
    missing = package(tmp_path, "1.0", None, "--train-data", str(nowhere), gate_data=None)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert f"error: --train-data {nowhere}: {nowhere} does not exist" in missing.stderr
    assert not list(tmp_path.glob("*.mar"))
