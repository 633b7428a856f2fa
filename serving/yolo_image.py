"""Image decoding, letterboxing and box math for the YOLO handler.

Plain functions with no TorchServe dependency, so tests can call them directly.
The handler ships this module inside the .mar next to ``yolo_handler.py``.
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

# An allow-list, not "whatever Pillow can open": exotic decoders are where decoder bugs live.
# HEIF is the iPhone's HEIC (through pillow-heif), AVIF is Pillow's own, PPM covers PBM/PGM/PPM.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO", "HEIF", "AVIF", "PPM"})
pillow_heif.register_heif_opener()
PAD_VALUE = 114  # Ultralytics' letterbox grey: the model was trained on it.
ORIENTATION = 0x0112  # the EXIF tag ``ImageOps.exif_transpose`` applies
TURNED_A_QUARTER = frozenset({5, 6, 7, 8})  # orientations that swap width and height


class RequestError(ValueError):
    """A request that cannot be served; carries the HTTP status and a machine code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Letterbox:
    """How an original image was mapped into the square model input."""

    ratio: float
    pad_x: float
    pad_y: float
    width: int
    height: int

    @property
    def content_width(self) -> int:
        """Width of the resized image inside the padded model input."""
        return max(round(self.width * self.ratio), 1)

    @property
    def content_height(self) -> int:
        return max(round(self.height * self.ratio), 1)

    @property
    def gain_x(self) -> float:
        """Horizontal scale actually applied: sides are rounded to whole pixels, as Ultralytics' letterbox does."""
        return self.content_width / self.width

    @property
    def gain_y(self) -> float:
        return self.content_height / self.height


@dataclass(frozen=True)
class Decoded:
    """A decoded upload: its RGB pixels, maybe reduced, and the size of the upright original they stand for."""

    rgb: np.ndarray
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode raw bytes to an upright RGB uint8 array (H, W, 3) at full size."""
    return decode_upload(data, max_pixels).rgb


def decode_upload(data: bytes, max_pixels: int, reduce_to: int = 0, side=max) -> Decoded:
    """Decode raw bytes to upright RGB, a JPEG at the smallest DCT scale whose ``side`` stays >= ``reduce_to``.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb is refused without allocating it. EXIF orientation is applied
    so boxes refer to the image as a person sees it.

    A 640x480 photo for a 320 px model is letterboxed to 320x240 anyway: libjpeg can decode
    it at 1/2, 1/4 or 1/8 of its size straight from the DCT coefficients, in a fraction of
    the time of a full decode and a resize. ``side`` says which side the model's resize
    keeps >= its input size (``max``: the letterbox's long side; ``min``: a crop's short
    side); the original's size is kept so boxes are still reported in its pixels.
    """
    if not data:
        raise RequestError(400, "empty_file", "The uploaded file is empty.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = _pillow_open()(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestError(413, "image_too_large", f"Image refused as a decompression bomb: {exc}") from exc
        except Exception as exc:  # Pillow raises many types on hostile bytes; all mean "not an image"
            raise _unreadable(exc) from exc
    if image.format not in ALLOWED_FORMATS:
        raise RequestError(415, "unsupported_image", f"Image format {image.format} is not supported.")
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            413,
            "image_too_large",
            f"Image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}.",
        )
    try:
        image.seek(0)
        scale = jpeg_scale(width, height, reduce_to, side) if image.format == "JPEG" else 1
        if scale > 1:
            image.draft(image.mode, (width // scale, height // scale))
        turned = image.getexif().get(ORIENTATION, 1) in TURNED_A_QUARTER
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
        return Decoded(to_rgb(image), *((height, width) if turned else (width, height)))
    except Exception as exc:  # truncated or corrupt pixel data surfaces only while decoding
        raise _unreadable(exc) from exc


def jpeg_scale(width: int, height: int, reduce_to: int, side=max) -> int:
    """The largest JPEG DCT scale (8, 4, 2, else 1) that keeps ``side`` of the reduced image >= ``reduce_to``."""
    if reduce_to <= 0:
        return 1
    return next((s for s in (8, 4, 2) if side(width // s, height // s) >= reduce_to), 1)


def _pillow_open():
    """Pillow's own ``Image.open``.

    Importing Ultralytics replaces ``Image.open`` with a wrapper that, on an unknown
    file, tries to pip-install a HEIF plugin: a network call per bad upload.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)


def _unreadable(exc: Exception) -> RequestError:
    reason = (
        "the format is not recognised" if isinstance(exc, UnidentifiedImageError) else str(exc) or type(exc).__name__
    )
    return RequestError(415, "invalid_image", f"The file is not a decodable image: {reason}.")


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode (palette, alpha, CMYK, 16-bit, float) to RGB uint8.

    RGB, the mode of nearly every upload, is read straight into an array: ``convert("RGB")``
    would first copy an image that is already RGB, several times the cost of the read.
    """
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max(initial=0) > 255 else 255.0  # 16-bit data, or 8-bit data in a wide container
        gray = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (PAD_VALUE, PAD_VALUE, PAD_VALUE, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def letterbox(
    rgb: np.ndarray, size: int, stride: int = 32, original: tuple[int, int] | None = None
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio so the long side is ``size``, then pad (never crop).

    Padding goes only up to the next multiple of ``stride``, exactly as Ultralytics'
    predictor letterboxes a single image, so served boxes and confidences equal the
    ones ``model.predict`` gives for the same weights. ``original`` is the (width, height)
    that ``rgb`` stands for when it was decoded reduced: sizes and the returned mapping
    are the original's.
    """
    width, height = original or (rgb.shape[1], rgb.shape[0])
    ratio = min(size / height, size / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    if (new_w, new_h) != (rgb.shape[1], rgb.shape[0]):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = ((size - new_w) % stride) / 2, ((size - new_h) % stride) / 2
    top, bottom = round(pad_y - 0.1), round(pad_y + 0.1)
    left, right = round(pad_x - 0.1), round(pad_x + 0.1)
    canvas = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return canvas, Letterbox(ratio=ratio, pad_x=left, pad_y=top, width=width, height=height)


def batch_tensor(images: list[np.ndarray]) -> np.ndarray:
    """Stack letterboxed HWC uint8 images into an NCHW float32 array in [0, 1].

    Written into one preallocated array and scaled in place: no intermediate uint8 stack
    or second float array per batch.
    """
    height, width = images[0].shape[:2]
    batch = np.empty((len(images), 3, height, width), dtype=np.float32)
    for row, image in enumerate(images):
        batch[row] = image.transpose(2, 0, 1)
    batch /= 255.0
    return batch
