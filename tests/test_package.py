"""scripts/package_mar.sh: what an operator runs to turn weights into a versioned archive."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zipfile

import pytest
import yaml

from tests.helpers import ROOT, WEIGHTS, package

pytestmark = pytest.mark.packaging


def test_help_lists_the_options():
    result = subprocess.run(["bash", "scripts/package_mar.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--weights", "--version", "--name", "--force"):
        assert option in result.stdout


def test_builds_a_versioned_archive_and_reports_it(tmp_path):
    result = package(tmp_path, "1.0")
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
    assert {"gate/gate.yaml", "gate/data.yaml", "gate/labels/mixed_01.txt", "gate/mixed_01.jpg"} <= names
    assert re.search(r"^gate:\s+\S*samples$", result.stdout, re.M)
    assert manifest["model"]["modelName"] == "yolo" and manifest["model"]["modelVersion"] == "1.0"
    assert config["handler"]["imgsz"] % 32 == 0 and config["batchSize"] >= 1


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
