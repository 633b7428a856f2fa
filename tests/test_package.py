"""Packaging: ``operations.packaging.package`` and its command line, scripts/package_mar.sh, which an operator
runs to turn weights into a versioned archive.

Every build here is real (never tests/helpers' memo): packaging is what is tested.
"""

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
from operations.packaging import CarriedGate, Packaged, PackagingError, package
from quality.gate_sets import gate_spec, load_gate_set
from tests.helpers import ROOT, SAMPLES, WEIGHTS

pytestmark = pytest.mark.packaging


def build(store: Path, version: str, weights: Path | None = None, **options) -> tuple[Packaged, str]:
    """Package for real, our samples as the gate set unless ``gate_data`` says otherwise; the archive and what
    packaging said while it built it."""
    said: list[str] = []
    options.setdefault("gate_data", SAMPLES)
    built = package(weights or WEIGHTS[version], version, store, log=said.append, **options)
    return built, "\n".join(said)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/package_mar.sh", *args], cwd=ROOT, capture_output=True, text=True)


def test_help_lists_the_options():
    result = cli("--help")
    assert result.returncode == 0
    for option in ("--weights", "--version", "--name", "--force", "--gate-data", "--gate-threshold", "--train-data"):
        assert option in result.stdout


def test_the_command_line_builds_a_versioned_archive_and_reports_it(tmp_path):
    result = cli(
        *("--weights", str(WEIGHTS["1.0"]), "--version", "1.0", "--store", str(tmp_path)),
        *("--gate-data", "samples", "--train-data", "samples/data.yaml"),
    )
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
    archive = build(tmp_path, "1.0", fmt="pt")[0].archive
    before = archive.read_bytes()
    with pytest.raises(PackagingError, match="exists; a version is immutable, pick a new --version or pass --force"):
        build(tmp_path, "1.0", WEIGHTS["2.0"], fmt="pt")
    assert archive.read_bytes() == before
    # the command line's refusal: one error line on stderr, exit status 1, nothing printed as built
    again = cli("--weights", str(WEIGHTS["2.0"]), "--version", "1.0", "--store", str(tmp_path), "--format", "pt")
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == f"error: {archive} exists; a version is immutable, pick a new --version or pass --force\n"
    assert archive.read_bytes() == before
    forced, _ = build(tmp_path, "1.0", WEIGHTS["2.0"], fmt="pt", force=True)
    assert archive.read_bytes() != before and forced.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_broken_weights_are_refused_before_packaging(tmp_path):
    bogus = tmp_path / "broken.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(PackagingError, match="does not load"):
        build(tmp_path, "9.0", bogus)
    assert not list(tmp_path.glob("*.mar"))


def test_a_handler_key_the_handler_does_not_know_is_refused_by_name(tmp_path):
    """The worker would refuse it when it loads; packaging says so first, naming the key and the file."""
    config = tmp_path / "typo.yaml"
    template = (ROOT / "serving" / "model-config.yaml").read_text()
    config.write_text(template.replace("  conf: 0.25", "  confidence: 0.25"))
    with pytest.raises(PackagingError) as refused:
        build(tmp_path, "1.0", WEIGHTS["1.0"], config=config)
    assert str(refused.value).startswith(f"{config}: handler section: unknown handler key 'confidence'")
    assert not list(tmp_path.glob("*.mar"))


def test_bad_version_and_missing_weights_are_refused(tmp_path):
    with pytest.raises(PackagingError, match="version must look like"):
        build(tmp_path, "v1", WEIGHTS["1.0"])
    with pytest.raises(PackagingError, match="not found"):
        build(tmp_path, "1.1", tmp_path / "nope.pt")


def test_a_gate_set_must_fit_the_weights(tmp_path):
    with pytest.raises(PackagingError, match="is for a segment model; the weights are detect"):
        build(tmp_path, "1.0", gate_data=ROOT / "samples" / "gates" / "segment")
    with pytest.raises(PackagingError, match="labels classes .*bolt"):
        build(tmp_path, "1.0", gate_data=ROOT / "samples" / "gates" / "detect")
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
    with pytest.raises(PackagingError) as refused:
        build(store, "1.0", fmt="pt", gate_data=source)
    assert str(refused.value) == (
        f"gate set {source} has no threshold: add --gate-threshold 0.5 or write threshold: 0.5 in {source}/gate.yaml"
    )
    built, said = build(store, "1.0", fmt="pt", gate_threshold=0.3, gate_data=source)
    assert f"gate set ok: {source} (task detect, 6 images, threshold 0.3)" in said
    assert built.gate == CarriedGate(str(source), "detect", 6, 0.3)
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
    reused, said = build(store, "1.1", WEIGHTS["2.0"], fmt="pt", gate_data=None)
    assert "gate set: reusing the one in yolo_v1.0.mar (task detect, 6 images, threshold 0.3)" in said
    assert reused.gate.source == "reused from yolo_v1.0.mar"
    assert gate_files(store / "yolo_v1.1.mar") == gate_files(first)
    assert archive_lineage(store / "yolo_v1.1.mar")["parent"] == "1.0"

    other_classes, said = build(
        store, "1.2", ROOT / "models" / "weights" / "tasks" / "detect" / "best.pt", fmt="pt", gate_data=None
    )
    assert (
        "gate set: not reusing the one in yolo_v1.0.mar: its classes ['dent', 'scratch', 'stain'] are not the "
        "weights' ['bolt', 'nut', 'washer']" in said
    )
    assert other_classes.gate is None
    assert gate_files(store / "yolo_v1.2.mar") == {}


def test_what_is_missing_from_a_gate_set_or_the_training_data_is_named(tmp_path):
    source = ultralytics_gate_set(tmp_path / "parts")
    (source / "images" / "val").rename(source / "images" / "valid")
    with pytest.raises(PackagingError) as unusable:
        build(tmp_path, "1.0", fmt="pt", gate_threshold=0.3, gate_data=source)
    assert str(unusable.value).startswith(
        f"gate set {source} is unusable: {source}/data.yaml: val: images/val is {source}/images/val, which "
        "does not exist; put the validation images there or point val: at their folder"
    )
    nowhere = tmp_path / "nowhere.yaml"
    with pytest.raises(PackagingError, match=f"--train-data {nowhere}: {nowhere} does not exist"):
        build(tmp_path, "1.0", train_data=nowhere, gate_data=None)
    assert not list(tmp_path.glob("*.mar"))


def test_the_archiver_stages_in_a_folder_of_the_build_s_own(tmp_path, monkeypatch):
    """torch-model-archiver copies a model's files into $TMPDIR/<name>: two builds of one name at once (a
    retraining beside an operator, parallel test lanes) mixed their files there. What sits in the shared
    temporary folder under that name cannot touch a build."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    (shared / "yolo").write_text("another build's staging, or anything else of that name")
    monkeypatch.setenv("TMPDIR", str(shared))
    built, _ = build(tmp_path / "store", "1.0", fmt="pt")
    with zipfile.ZipFile(built.archive) as mar:
        assert {"yolo_handler.py", "yolo_contract.py", "model-config.yaml"} <= set(mar.namelist())
    assert (shared / "yolo").read_text().startswith("another build's")
