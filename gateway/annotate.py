"""Draw detections onto the uploaded image for ``format=image`` answers.

This is the one place the gateway decodes an image, and only when a client asks for a
picture; the JSON path passes bytes through untouched.
"""

from __future__ import annotations

import io

import pillow_heif
from PIL import Image, ImageDraw, ImageFont, ImageOps

pillow_heif.register_heif_opener()  # HEIC uploads are served (serving/yolo_image.py), so they are drawn too

PALETTE = ((255, 56, 56), (50, 205, 50), (255, 178, 29), (72, 137, 255), (207, 73, 255), (0, 212, 187))


def annotate(image_bytes: bytes, detections: list[dict], quality: int = 90) -> bytes:
    """Return a JPEG of the upright image with each box, class name and confidence drawn."""
    with Image.open(io.BytesIO(image_bytes)) as source:
        source.seek(0)
        image = ImageOps.exif_transpose(source).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 50)))
    for det in detections:
        color = PALETTE[det["class_id"] % len(PALETTE)]
        x1, y1, x2, y2 = det["bbox"]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        label = f"{det['class']} {det['confidence']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        lift = bottom - top + 2 * width
        y = y1 - lift if y1 - lift >= 0 else y1
        draw.rectangle((x1, y, x1 + right - left + 2 * width, y + lift), fill=color)
        draw.text((x1 + width, y + width), label, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
