"""The handler's image and box math, without a server: formats, modes, EXIF, bombs, letterbox."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from yolo_image import (
    PAD_VALUE,
    RequestError,
    batch_tensor,
    decode_image,
    decode_upload,
    jpeg_scale,
    letterbox,
)

MAX_PIXELS = 40_000_000


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(x[::-1], (height, 1)), np.full((height, width), 90, np.uint8)], 2)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF", "PPM"])
def test_common_formats_decode_to_rgb(fmt):
    rgb = decode_image(encode(gradient(), fmt), MAX_PIXELS)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8


def test_pgm_from_an_industrial_camera_decodes():
    data = encode(gradient().convert("L"), "PPM")
    assert data.startswith(b"P5")  # binary greyscale PGM
    rgb = decode_image(data, MAX_PIXELS)
    assert rgb.shape == (48, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "I;16", "I", "F"])
def test_every_camera_mode_becomes_rgb(mode):
    image = gradient().convert("L").convert(mode) if mode in ("I;16", "I", "F") else gradient().convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    rgb = decode_image(encode(image, fmt), MAX_PIXELS)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert rgb.max() > 0, "content must survive the conversion"


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    rgb = decode_image(encode(Image.fromarray(values), "PNG"), MAX_PIXELS)
    assert rgb[0, :, 0].tolist() == [0, 127, 255]


def test_gif_uses_first_frame():
    red, blue = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue])
    rgb = decode_image(data, MAX_PIXELS)
    assert rgb[5, 10, 0] > 200 and rgb[5, 10, 2] < 50


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF"])
def test_exif_orientation_makes_the_image_upright(fmt):
    image = gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    rgb = decode_image(encode(image, fmt, exif=exif.tobytes()), MAX_PIXELS)
    assert rgb.shape == (64, 48, 3)


def test_decompression_bomb_refused_before_decoding():
    huge = encode(Image.new("L", (8000, 6000)), "PNG")
    with pytest.raises(RequestError) as err:
        decode_image(huge, max_pixels=10_000_000)
    assert (err.value.status, err.value.code) == (413, "image_too_large")


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "PPM"])
def test_pixel_limit_guards_the_new_formats_too(fmt):
    with pytest.raises(RequestError) as err:
        decode_image(encode(gradient(), fmt), max_pixels=64 * 48 - 1)
    assert (err.value.status, err.value.code) == (413, "image_too_large")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_file"),
        (b"this is a text file, not an image", 415, "invalid_image"),
        (encode(gradient(), "JPEG")[:200], 415, "invalid_image"),
        (b"%PDF-1.4\n" + b"0" * 100, 415, "invalid_image"),
        (encode(gradient(), "HEIF")[:300], 415, "invalid_image"),
        (encode(gradient(), "AVIF")[:300], 415, "invalid_image"),
    ],
    ids=["empty", "text", "truncated-jpeg", "pdf", "truncated-heic", "truncated-avif"],
)
def test_bad_bytes_get_a_clear_4xx(data, status, code):
    with pytest.raises(RequestError) as err:
        decode_image(data, MAX_PIXELS)
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.message


def test_unsupported_format_refused():
    data = encode(gradient(), "PCX")
    with pytest.raises(RequestError) as err:
        decode_image(data, MAX_PIXELS)
    assert (err.value.status, err.value.code) == (415, "unsupported_image")


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (480, 640), (320, 320), (1000, 37), (100, 60)])
def test_letterbox_keeps_the_whole_image_and_pads_to_the_stride(width, height):
    rgb = np.full((height, width, 3), 200, dtype=np.uint8)
    canvas, box = letterbox(rgb, 320)
    assert canvas.shape[0] % 32 == 0 and canvas.shape[1] % 32 == 0
    assert max(canvas.shape[:2]) == 320, "the long side fills the model input"
    content = (canvas != PAD_VALUE).any(axis=2)
    rows, cols = np.where(content)
    assert rows.max() - rows.min() + 1 == round(height * box.ratio), "no rows cropped"
    assert cols.max() - cols.min() + 1 == round(width * box.ratio), "no columns cropped"


def test_letterbox_matches_ultralytics(ground_truth):
    from ultralytics.data.augment import LetterBox

    bgr = cv2.imread(str(ground_truth[0].path))
    expected = LetterBox((320, 320), auto=True, stride=32)(image=bgr)
    canvas, _ = letterbox(decode_image(ground_truth[0].path.read_bytes(), MAX_PIXELS), 320)
    assert canvas.shape == expected.shape
    assert np.abs(canvas.astype(int) - expected[..., ::-1].astype(int)).mean() < 1.0


def test_batch_tensor_is_nchw_scaled_to_unit_range():
    images = [np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8) for seed in (1, 2)]
    batch = batch_tensor(images)
    assert batch.shape == (2, 3, 64, 96) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for row, image in enumerate(images):
        np.testing.assert_array_equal(batch[row], image.transpose(2, 0, 1).astype(np.float32) / 255.0)


@pytest.mark.parametrize(
    ("size", "reduce_to", "side", "scale"),
    [
        ((640, 480), 320, max, 2),  # our samples for our 320 px model: decoded at 320x240, no resize left
        ((1920, 1080), 320, max, 4),  # 480x270: an eighth (240x135) would be smaller than the model's input
        ((4000, 3000), 320, max, 8),
        ((641, 480), 320, max, 2),
        ((639, 480), 320, max, 1),  # half would be 319 px: never decode below the model's input
        ((640, 480), 224, min, 2),  # classify: the short side (240) stays >= 224
        ((640, 480), 320, min, 1),
        ((640, 480), 0, max, 1),  # reduction off
    ],
)
def test_jpeg_scale_never_goes_below_the_models_input(size, reduce_to, side, scale):
    assert jpeg_scale(*size, reduce_to, side) == scale


def test_reduced_jpeg_decode_keeps_the_originals_size_and_letterboxes_like_a_full_decode():
    data = encode(gradient(640, 480), "JPEG", quality=95)
    reduced = decode_upload(data, MAX_PIXELS, reduce_to=320)
    assert reduced.rgb.shape == (240, 320, 3) and (reduced.width, reduced.height) == (640, 480)
    canvas, box = letterbox(reduced.rgb, 320, original=(reduced.width, reduced.height))
    full_canvas, full_box = letterbox(decode_image(data, MAX_PIXELS), 320)
    assert canvas.shape == full_canvas.shape and box == full_box
    assert np.abs(canvas.astype(int) - full_canvas.astype(int)).mean() < 2  # the same picture, a pixel's rounding


def test_reduced_decode_of_a_turned_jpeg_reports_the_upright_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    decoded = decode_upload(encode(gradient(640, 480), "JPEG", exif=exif.tobytes()), MAX_PIXELS, reduce_to=320)
    assert decoded.rgb.shape == (320, 240, 3) and (decoded.width, decoded.height) == (480, 640)


def test_reduced_decode_leaves_other_formats_at_full_size():
    decoded = decode_upload(encode(gradient(640, 480), "PNG"), MAX_PIXELS, reduce_to=320)
    assert decoded.rgb.shape == (480, 640, 3) and (decoded.width, decoded.height) == (640, 480)
