"""The per-task data generator: deterministic, exact labels, and the layouts Ultralytics trains from."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from models import generate_tasks as gt


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in {".jpg", ".txt"}}


@pytest.mark.parametrize("task", gt.TASKS)
def test_same_seed_same_bytes_other_seed_other_images(tmp_path, task):
    counts = {"train": 3, "val": 2}
    gt.generate(task, tmp_path / "a", 5, counts, (128, 96))
    gt.generate(task, tmp_path / "b", 5, counts, (128, 96))
    gt.generate(task, tmp_path / "c", 6, counts, (128, 96))
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert len([f for f in a if f.endswith(".jpg")]) == 5
    assert a == b
    assert a != c


def test_one_image_can_be_rebuilt_alone():
    first, labels = gt.render_image("obb", (320, 240), seed=1, split="val", index=7)
    again, labels_again = gt.render_image("obb", (320, 240), seed=1, split="val", index=7)
    assert np.array_equal(first, again) and labels == labels_again


def test_yolo_layout_and_pose_keypoint_metadata(tmp_path):
    data = gt.generate("pose", tmp_path, 0, {"train": 2, "val": 1}, (160, 120))
    spec = yaml.safe_load(data.read_text())
    assert spec["kpt_shape"] == [4, 3]
    assert spec["kpt_names"] == {0: ["tip", "base", "left", "right"]}
    assert [spec["kpt_names"][0][i] for i in spec["flip_idx"]] == ["tip", "base", "right", "left"]
    assert spec["names"] == {0: "tab"} and spec["train"] == "images/train"
    for label in (tmp_path / "labels" / "train").glob("*.txt"):
        for line in label.read_text().splitlines():
            assert len(line.split()) == 1 + 4 + 4 * 3


def test_classify_layout_is_one_folder_per_class(tmp_path):
    root = gt.generate("classify", tmp_path, 0, {"train": 12, "val": 4}, (64, 64))
    folders = {p.name for p in (root / "train").iterdir()}
    assert folders <= set(gt.CLASSES["classify"]) and len(folders) > 1
    assert sum(1 for _ in (root / "val").rglob("*.jpg")) == 4


def test_labels_lie_inside_the_image_and_match_the_drawn_part():
    for index in range(5):
        bgr, objects = gt.render_image("segment", (320, 240), index=index)
        assert bgr.shape == (240, 320, 3) and objects
        for obj in objects:
            x1, y1, x2, y2 = obj["bbox"]
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            polygon = np.asarray(obj["polygon"])
            assert polygon[:, 0].min() == x1 and polygon[:, 1].max() == y2
    bgr, objects = gt.render_image("obb", (320, 240), index=0)
    sides = np.linalg.norm(np.diff(np.asarray(objects[0]["corners"] + objects[0]["corners"][:1]), axis=0), axis=1)
    assert sides[0] == pytest.approx(sides[2]) and sides[1] == pytest.approx(sides[3])  # a true rectangle
