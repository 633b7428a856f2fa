"""The samples and our gate hold on any CPU: every assertion on them keeps a margin from the threshold.

A change of CPU moves a score by about 0.001 (issue: the scratch in the old mixed_01.jpg scored
0.2509 on one machine and under 0.25 on another). Re-encoding every sample as JPEG quality 90 is a
larger perturbation of the same kind, so each released version, served from its archive, must still
find every labelled defect and pass its gate on the re-encoded copies, and the served scores must
keep a margin from the confidence threshold on the originals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from quality import gate_scoring, gate_sets
from quality.tasks import task_of
from tests.helpers import (
    ROOT,
    SAMPLES,
    assert_finds_ground_truth,
    handler_answers,
    handler_for,
    load_ground_truth,
    package,
)

sys.path.insert(0, str(ROOT / "models"))
from make_samples import GATE_MARGIN, REENCODE_QUALITY, margins, reencoded_copy  # noqa: E402

pytestmark = pytest.mark.packaging

# Served scores stay this far from conf on both sides (make_samples.py selected with 0.08 on Ultralytics' predict;
# the served archive decodes and infers differently, so the test holds it to a little less).
SERVED_MARGIN = 0.05


@pytest.fixture(scope="module")
def handlers(model_store, tmp_path_factory) -> dict:
    """v1.0 and v2.0, each initialised from its own archive as a TorchServe worker does it."""
    store = tmp_path_factory.mktemp("store-2.0")
    package(store, "2.0")
    archives = {"1.0": model_store / "yolo_v1.0.mar", "2.0": store / "yolo_v2.0.mar"}
    return {v: handler_for(path, tmp_path_factory.mktemp(f"unpacked-{v}")) for v, path in archives.items()}


@pytest.fixture(scope="module")
def reencoded(tmp_path_factory) -> Path:
    """A copy of samples/ (labels, data.yaml, gate.yaml) whose images are re-encoded as JPEG quality 90."""
    return reencoded_copy(SAMPLES, tmp_path_factory.mktemp("samples") / "samples")


def test_reencoded_copies_really_differ(reencoded):
    for image in SAMPLES.glob("*.jpg"):
        assert (reencoded / image.name).read_bytes() != image.read_bytes()
    assert REENCODE_QUALITY == 90


@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize("copy", ["as written", "re-encoded"])
def test_every_version_finds_every_labelled_defect_and_passes_the_gate(handlers, reencoded, version, copy):
    folder = SAMPLES if copy == "as written" else reencoded
    truths = load_ground_truth()
    answers = handler_answers(handlers[version], [folder / t.name for t in truths])
    for truth, answer in zip(truths, answers, strict=True):
        assert_finds_ground_truth(answer["detections"], truth)
        if not truth.boxes:
            assert answer["detections"] == [], f"{truth.name}: the clean part yields nothing"
    spec = gate_sets.gate_spec(folder)
    task, items = gate_sets.load_gate_set(folder)
    assert [i["image"].name for i in items] == sorted(t.name for t in truths)
    by_name = {t.name: a for t, a in zip(truths, answers, strict=True)}
    value = task_of(task).gate_metric(items, [by_name[i["image"].name] for i in items])
    assert value >= float(spec["threshold"]), f"v{version} {copy}: recall {value} < gate {spec['threshold']}"


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_served_scores_keep_a_margin_from_the_threshold(handlers, version):
    """Every labelled defect scores >= conf + margin and nothing else reaches conf - margin, as served."""
    truths = load_ground_truth()
    conf = handlers[version].config.conf
    low = handler_answers(handlers[version], [t.path for t in truths], {"X-Yolo-Conf": str(conf / 4)})
    for truth, answer in zip(truths, low, strict=True):
        gt = [(box["class"], *box["bbox"]) for box in truth.boxes]
        dets = [(d["class"], d["confidence"], *d["bbox"]) for d in answer["detections"]]
        found = margins(gt, dets, conf, min_iou=0.5)
        assert found is not None, f"v{version} {truth.name}: a labelled defect is not found even at conf {conf / 4}"
        assert min(found) >= SERVED_MARGIN, f"v{version} {truth.name}: (defect, other) margins {found} from {conf}"


def test_gate_yaml_says_how_its_threshold_was_measured():
    text = (SAMPLES / "gate.yaml").read_text()
    spec = yaml.safe_load(text)
    assert spec["task"] == "detect" and spec["metric"] == "recall"
    assert spec["threshold"] == gate_scoring.threshold_from(spec["measured"], margin=GATE_MARGIN)
    assert spec["threshold"] < 1.0, "one missed defect of nine must not be the difference between two CPUs"
    for line in ("models/make_samples.py", "JPEG quality 90", "v1.0/best.pt", "v2.0/best.pt"):
        assert line in text
