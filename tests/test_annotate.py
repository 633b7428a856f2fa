"""The annotated picture (``format=image``) for every task, drawn on a blank image and read back pixel by pixel."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from gateway.annotate import PALETTE, Pen, annotate


def blank(size=(320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (255, 255, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def drawn(body: dict, size=(320, 240)) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(annotate(blank(size), body))).convert("RGB"), dtype=np.int16)


def close_to(pixel, color, tolerance: int = 60) -> bool:
    return bool(np.abs(np.asarray(pixel) - np.asarray(color)).max() <= tolerance)


def test_top_k_classes_are_listed_one_under_another():
    body = {"classifications": [{"class": c, "class_id": i, "confidence": 0.5} for i, c in enumerate("abc")]}
    picture = drawn(body)
    pen = Pen(Image.new("RGB", (320, 240)))
    for rank in range(3):
        row = pen.width + rank * pen.line_height + 2
        assert close_to(picture[row, pen.width + 1], PALETTE[rank]), (rank, picture[row, pen.width + 1])


def keypoint(x, y, confidence=0.9) -> dict:
    return {"name": "k", "x": x, "y": y, "confidence": confidence}


def test_seventeen_keypoints_get_the_coco_skeleton_other_sets_only_dots():
    points = [keypoint(20 + 15 * i, 120) for i in range(17)]
    coco = {"detections": [{"class": "person", "class_id": 0, "confidence": 0.9, "bbox": [5, 5, 315, 235]}]}
    coco["detections"][0]["keypoints"] = points
    between_shoulders = (120, round((points[5]["x"] + points[6]["x"]) / 2))  # COCO pair (6, 7), 1-based
    assert close_to(drawn(coco)[between_shoulders], PALETTE[0])
    four = {"detections": [{**coco["detections"][0], "keypoints": points[:4]}]}
    between_first_two = (120, round((points[0]["x"] + points[1]["x"]) / 2))
    assert close_to(drawn(four)[between_first_two], (255, 255, 255), tolerance=10), "no made-up skeleton"


def test_rotated_boxes_and_mask_outlines_are_drawn_where_the_answer_puts_them():
    body = {
        "detections": [
            {
                "class": "plate",
                "class_id": 1,
                "confidence": 0.9,
                "bbox": [50, 50, 150, 150],
                "corners": [[100, 50], [150, 100], [100, 150], [50, 100]],
            },
            {
                "class": "gasket",
                "class_id": 2,
                "confidence": 0.8,
                "bbox": [200, 60, 300, 200],
                "polygons": [[[200, 60], [300, 60], [300, 200], [200, 200]]],
            },
        ]
    }
    picture = drawn(body)
    assert close_to(picture[75, 125], PALETTE[1]), "edge of the rotated box"
    assert close_to(picture[55, 55], (255, 255, 255), tolerance=10), "no axis-aligned box for an obb"
    assert close_to(picture[130, 300], PALETTE[2]), "mask outline"
