"""Draw a prediction of any task onto the uploaded image for ``format=image`` answers.

This is the one place the gateway decodes an image, and only when a client asks for a
picture; the JSON path passes bytes through untouched. Boxes and labels for every task,
mask outlines for segment, keypoints and their skeleton for pose, the rotated box for obb,
and a top-k list for classify.
"""

from __future__ import annotations

import io

import pillow_heif
from PIL import Image, ImageDraw, ImageFont, ImageOps

from serving.yolo_contract import answer_items, answer_task, locates

pillow_heif.register_heif_opener()  # HEIC uploads are served (serving/yolo_image.py), so they are drawn too

# Ultralytics' skeleton for the 17 COCO keypoints (1-based pairs); other keypoint sets are drawn as dots.
COCO_SKELETON = (
    (16, 14),
    (14, 12),
    (17, 15),
    (15, 13),
    (12, 13),
    (6, 12),
    (7, 13),
    (6, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (9, 11),
    (2, 3),
    (1, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
)
COCO_KEYPOINTS = 17
PALETTE = ((255, 56, 56), (50, 205, 50), (255, 178, 29), (72, 137, 255), (207, 73, 255), (0, 212, 187))


def annotate(image_bytes: bytes, body: dict, quality: int = 90) -> bytes:
    """Return a JPEG of the upright image with the answer ``body`` drawn on it."""
    with Image.open(io.BytesIO(image_bytes)) as source:
        source.seek(0)
        image = ImageOps.exif_transpose(source).convert("RGB")
    pen = Pen(image)
    located = locates(answer_task(body))
    for rank, item in enumerate(answer_items(body)):
        if located:
            pen.detection(item)
        else:  # a classifier's classes, best first, listed from the top-left corner
            text = f"{item['class']} {item['confidence']:.2f}"
            pen.label((pen.width, pen.width + rank * pen.line_height), text, PALETTE[rank % len(PALETTE)], below=True)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class Pen:
    """Line width and font scaled to the image, so labels stay legible on any size."""

    def __init__(self, image: Image.Image):
        self.draw = ImageDraw.Draw(image)
        self.width = max(2, round(max(image.size) / 400))
        self.font = ImageFont.load_default(size=max(12, round(max(image.size) / 50)))
        left, top, right, bottom = self.draw.textbbox((0, 0), "Ag", font=self.font)
        self.line_height = bottom - top + 2 * self.width

    def detection(self, det: dict) -> None:
        """One detection: its mask outlines, its rotated or upright box, its keypoints and its label."""
        color = PALETTE[det["class_id"] % len(PALETTE)]
        for polygon in det.get("polygons") or []:
            self.outline(polygon, color)
        if det.get("corners"):
            self.outline(det["corners"], color)
            anchor = min(det["corners"], key=lambda p: (p[1], p[0]))
        else:
            self.draw.rectangle(det["bbox"], outline=color, width=self.width)
            anchor = det["bbox"][:2]
        if det.get("keypoints"):
            self.keypoints(det["keypoints"], color)
        self.label(anchor, f"{det['class']} {det['confidence']:.2f}", color)

    def outline(self, points: list, color: tuple) -> None:
        if len(points) >= 2:
            self.draw.line([tuple(p) for p in points] + [tuple(points[0])], fill=color, width=self.width)

    def keypoints(self, keypoints: list[dict], color: tuple) -> None:
        """Each visible keypoint as a dot; the COCO skeleton joins them when the model has those 17."""

        def shown(k: dict) -> bool:
            return k.get("confidence") is None or k["confidence"] >= 0.5

        if len(keypoints) == COCO_KEYPOINTS:
            for a, b in COCO_SKELETON:
                p, q = keypoints[a - 1], keypoints[b - 1]
                if shown(p) and shown(q):
                    self.draw.line([(p["x"], p["y"]), (q["x"], q["y"])], fill=color, width=self.width)
        radius = self.width + 1
        for x, y in [(k["x"], k["y"]) for k in keypoints if shown(k)]:
            self.draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255), outline=color)

    def label(self, anchor, text: str, color: tuple, below: bool = False) -> None:
        """A box's label sits above its anchor when there is room; a list's (``below``) starts at it."""
        x, y = anchor
        left, top, right, bottom = self.draw.textbbox((x, y), text, font=self.font)
        lift = bottom - top + 2 * self.width
        y = y - lift if not below and y - lift >= 0 else y
        self.draw.rectangle((x, y, x + right - left + 2 * self.width, y + lift), fill=color)
        self.draw.text((x + self.width, y + self.width), text, fill=(255, 255, 255), font=self.font)
