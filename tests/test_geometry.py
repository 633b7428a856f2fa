"""The handler's per-task math, without a server: boxes, points, rotated boxes, masks, RLE, top-k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quality.geometry import rasterise
from yolo_geometry import (
    mask_polygons,
    mask_to_image,
    rle_decode,
    rle_encode,
    rotated_corners,
    unletterbox_boxes,
    unletterbox_points,
    unletterbox_rotated,
)
from yolo_image import letterbox
from yolo_request import HandlerConfig, Params
from yolo_tasks import ClassifyTask, DetectTask, ObbTask, PoseTask

PARAMS = Params(conf=0.25, iou=0.7, max_det=100, classes=None)


def test_boxes_and_points_map_back_to_original_pixels():
    canvas, box = letterbox(np.zeros((720, 1280, 3), dtype=np.uint8), 640)
    original = np.array([[100.0, 50.0, 400.0, 700.0]])
    in_model = original * [box.gain_x, box.gain_y, box.gain_x, box.gain_y] + [box.pad_x, box.pad_y] * 2
    np.testing.assert_allclose(unletterbox_boxes(in_model, box), original, atol=1e-6)
    np.testing.assert_allclose(unletterbox_points(in_model.reshape(2, 2), box), original.reshape(2, 2), atol=1e-6)


def test_gains_follow_the_rounded_resize_as_ultralytics_does():
    _, box = letterbox(np.zeros((333, 517, 3), dtype=np.uint8), 320)
    assert box.content_width == 320 and box.content_height == round(333 * 320 / 517)
    assert box.gain_y == box.content_height / 333 != box.ratio


def test_rotated_box_corners_and_mapping():
    square = np.array([[10.0, 20.0, 4.0, 2.0, 0.0]])
    np.testing.assert_allclose(rotated_corners(square)[0], [[12, 21], [12, 19], [8, 19], [8, 21]])
    turned = rotated_corners(np.array([[0.0, 0.0, 4.0, 2.0, math.pi / 2]]))[0]
    np.testing.assert_allclose(turned, [[-1, 2], [1, 2], [1, -2], [-1, -2]], atol=1e-9)
    _, box = letterbox(np.zeros((480, 640, 3), dtype=np.uint8), 320)
    mapped = unletterbox_rotated(np.array([[160.0, 128.0, 20.0, 10.0, 0.3]]), box)
    np.testing.assert_allclose(mapped, [[320.0, (128 - box.pad_y) * 2, 40.0, 20.0, 0.3]])


def test_rle_round_trips_and_is_column_major_zeros_first():
    mask = np.zeros((3, 4), dtype=np.uint8)
    mask[0, 0] = mask[1, 0] = mask[2, 3] = 1
    rle = rle_encode(mask)
    assert rle == {"size": [3, 4], "counts": [0, 2, 9, 1]}
    np.testing.assert_array_equal(rle_decode(rle), mask)
    empty = rle_encode(np.zeros((2, 2), dtype=np.uint8))
    assert empty["counts"] == [4]
    with pytest.raises(ValueError):
        rle_decode({"size": [2, 2], "counts": [3]})


def test_mask_outlines_and_full_size_mask_land_on_the_original_image():
    _, box = letterbox(np.zeros((480, 640, 3), dtype=np.uint8), 320)
    canvas_mask = np.zeros((256, 320), dtype=np.uint8)
    canvas_mask[50:100, 40:120] = 1  # one region
    canvas_mask[150:200, 200:300] = 1  # and another
    polygons = mask_polygons(canvas_mask, box)
    assert len(polygons) == 2
    full = mask_to_image(canvas_mask, box)
    assert full.shape == (480, 640)
    drawn = rasterise([p.tolist() for p in polygons], 640, 480)
    overlap = np.logical_and(drawn, full).sum() / np.logical_or(drawn, full).sum()
    assert overlap > 0.95
    ys, xs = np.nonzero(full)
    assert xs.min() == 80 and ys.min() == (50 - box.pad_y) * 2


def test_detections_are_clipped_sorted_and_degenerate_boxes_dropped():
    _, box = letterbox(np.zeros((100, 200, 3), dtype=np.uint8), 64)
    task = DetectTask(HandlerConfig(imgsz=64), {0: "scratch", 1: "dent", 2: "stain"}, end2end=True)
    rows = torch.tensor(
        [
            [
                [66, 0, 80, 10, 0.5, 1],  # entirely right of the image: collapses and is dropped
                [10, 20, 30, 40, 0.7, 2],
                [-5, 20, 70, 40, 0.9, 0],  # sticks out left and right: clipped
                [10, 20, 30, 40, 0.1, 2],  # under the confidence threshold
            ]
        ]
    )
    item = task.prepare(np.zeros((100, 200, 3), dtype=np.uint8))
    detections = task.answer(rows, item, PARAMS)["detections"]
    assert [d["class"] for d in detections] == ["scratch", "stain"]
    for d in detections:
        x1, y1, x2, y2 = d["bbox"]
        assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 100


def test_pose_keypoints_are_named_and_mapped():
    config = HandlerConfig(task="pose", imgsz=64, kpt_names=("tip", "base"))
    task = PoseTask(config, {0: "part"}, end2end=True, kpt_shape=(2, 3))
    item = task.prepare(np.zeros((64, 128, 3), dtype=np.uint8))  # scaled by 0.5 to 64x32, no padding
    rows = torch.tensor([[[10, 20, 40, 30, 0.9, 0, 12, 14, 0.8, 30, 36, 0.4]]])
    (det,) = task.answer(rows, item, PARAMS)["detections"]
    assert det["keypoints"] == [
        {"name": "tip", "x": 24.0, "y": 28.0, "confidence": 0.8},
        {"name": "base", "x": 60.0, "y": 64.0, "confidence": 0.4},  # y 72 is past the image: clipped
    ]


def test_obb_answers_centre_size_angle_corners_and_enclosing_box():
    task = ObbTask(HandlerConfig(task="obb", imgsz=64), {0: "plate"}, end2end=True)
    item = task.prepare(np.zeros((64, 64, 3), dtype=np.uint8))
    rows = torch.tensor([[[32, 32, 20, 10, 0.9, 0, math.pi / 4]]])
    (det,) = task.answer(rows, item, PARAMS)["detections"]
    assert det["obb"] == {"cx": 32.0, "cy": 32.0, "w": 20.0, "h": 10.0, "angle": round(math.pi / 4, 4)}
    xs, ys = zip(*det["corners"], strict=True)
    assert det["bbox"] == [round(min(xs), 2), round(min(ys), 2), round(max(xs), 2), round(max(ys), 2)]


def test_classify_returns_top_k_best_first():
    task = ClassifyTask(HandlerConfig(task="classify", imgsz=32), {0: "ok", 1: "cracked", 2: "missing"}, False)
    item = task.prepare(np.zeros((48, 64, 3), dtype=np.uint8))
    assert item.canvas.shape == (32, 32, 3) and (item.width, item.height) == (64, 48)
    answer = task.answer(torch.tensor([0.2, 0.5, 0.3]), item, Params(0.25, 0.7, 100, None, top_k=2))
    assert answer == {
        "classifications": [
            {"class": "cracked", "class_id": 1, "confidence": 0.5},
            {"class": "missing", "class_id": 2, "confidence": 0.3},
        ]
    }
