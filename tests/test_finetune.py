"""Fine-tuning on captured images (retraining/finetune.py) and the generator's defocus shift (--blur)."""

from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import pytest  # noqa: E402

from models import generate_dataset as gd  # noqa: E402
from retraining.finetune import MODELS_DIR, fine_tune, map50_95  # noqa: E402

V1 = MODELS_DIR / "weights" / "v1.0" / "best.pt"
# generate(out, 7, {"test": 1}, (320, 240)) before the blur option existed: its bytes must not change.
KNOWN_JPEG = "84b3be91c8877f42d2924212a86ae772473bcb6e42605d5933b53080e335b156"
KNOWN_LABEL = "3a799f495c6a658db09ec796dfbd0c58813357228ecb5762025d17b30f65638c"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_blur_free_generation_keeps_its_bytes(tmp_path):
    root = gd.generate(tmp_path / "d", 7, {"test": 1}, (320, 240)).parent
    jpeg = (root / "images" / "test" / "test_00000.jpg").read_bytes()
    label = root / "labels" / "test" / "test_00000.txt"
    assert sha256(jpeg) == KNOWN_JPEG
    assert sha256(label.read_bytes()) == KNOWN_LABEL
    assert gd.sample(7, "test", 0, (320, 240)) == (jpeg, label.read_text())
    assert "blur" not in json.loads((root / "manifest.json").read_text())


def test_blur_changes_pixels_not_labels():
    sharp, sharp_label = gd.sample(7, "test", 0, (320, 240))
    blurred, blurred_label = gd.sample(7, "test", 0, (320, 240), blur=4.0)
    assert blurred != sharp and blurred_label == sharp_label and sharp_label.strip()
    assert len(blurred) < len(sharp)  # defocus removes the detail JPEG spends its bytes on


def test_blur_is_recorded(tmp_path):
    counts = {"train": 0, "val": 0, "test": 1}
    assert gd.dataset_name(3, counts, (320, 240)) == "defects_s3_320x240_0-0-1"
    assert gd.dataset_name(3, counts, (320, 240), 2.5) == "defects_s3_320x240_0-0-1_blur2.5"
    out = tmp_path / "cli"
    gd.main(
        ["--seed", "3", "--train", "0", "--val", "0", "--test", "1", "--size", "320x240", "--blur", "2.5"]
        + ["--out", str(out)]
    )
    assert json.loads((out / "manifest.json").read_text())["blur"] == 2.5
    assert (out / "images" / "test" / "test_00000.jpg").read_bytes() == gd.sample(3, "test", 0, (320, 240), 2.5)[0]


@pytest.fixture(scope="module")
def tiny_blurred(tmp_path_factory):
    """Six defocused training images and two validation ones, small enough to train on in seconds."""
    return gd.generate(tmp_path_factory.mktemp("blurred"), 11, {"train": 6, "val": 2}, (160, 128), blur=2.0)


@pytest.mark.training
def test_fine_tune_one_epoch(tiny_blurred, tmp_path):
    from ultralytics import YOLO

    result = fine_tune(V1, tiny_blurred, tmp_path / "run", epochs=1, imgsz=64, batch=6)
    assert result.epochs == 1 and result.wall_s > 0
    assert result.weights.exists() and result.weights.parent == result.save_dir / "weights"
    assert set(result.metrics) >= {"precision", "recall", "mAP50", "mAP50-95"}
    assert YOLO(str(result.weights)).names == YOLO(str(V1)).names == dict(enumerate(gd.CLASSES))


def test_map50_95_on_a_tiny_split(tiny_blurred):
    scores = map50_95(V1, tiny_blurred, split="val", imgsz=128)
    assert 0.0 <= scores["mAP50-95"] <= scores["mAP50"] <= 1.0
