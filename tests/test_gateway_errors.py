"""Hostile input through the real gateway: every answer is a clear 4xx JSON error, and the stack stays healthy."""

from __future__ import annotations

import io
import json
import re
import select
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile import png_bomb
from tests.helpers import assert_finds_ground_truth, assert_valid_contract

pytestmark = pytest.mark.integration


def post_file(stack, data: bytes, name: str = "image.jpg", field: str = "file", **params) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}/predict", files={field: (name, data)}, params=params, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] == code and body["error"]["message"]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def stays_healthy(stack):
    """After every hostile request the stack must still be ready."""
    yield
    assert httpx.get(f"{stack.gateway_url}/health", timeout=10).status_code == 200


def test_empty_file(stack):
    assert_error(post_file(stack, b""), 400, "empty_file")


def test_text_file_named_jpg(stack):
    assert_error(post_file(stack, b"hello, I am a text file\n" * 20, "photo.jpg"), 415, "invalid_image")


def test_truncated_jpeg(stack, ground_truth):
    data = ground_truth[0].path.read_bytes()
    assert_error(post_file(stack, data[: len(data) // 3]), 415, "invalid_image")


def test_wrong_field_name(stack, ground_truth):
    assert_error(post_file(stack, ground_truth[0].path.read_bytes(), field="image"), 400, "unknown_field")


def test_no_multipart_at_all(stack, ground_truth):
    raw = httpx.post(f"{stack.gateway_url}/predict", content=ground_truth[0].path.read_bytes(), timeout=30)
    assert_error(raw, 400, "expected_multipart")
    assert_error(httpx.post(f"{stack.gateway_url}/predict", json={"file": "x"}), 400, "expected_multipart")


def test_missing_file_part(stack):
    response = httpx.post(
        f"{stack.gateway_url}/predict",
        content=b"--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 400, "missing_file")


def test_twenty_thousand_square_image_is_refused(stack):
    assert_error(post_file(stack, png_bomb(20000, 20000), "bomb.png"), 413, "image_too_large")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"conf": "2"}, "conf"), ({"iou": "x"}, "iou"), ({"max_det": "0"}, "max_det"), ({"version": "latest"}, "version")],
)
def test_bad_query_parameters(stack, ground_truth, params, fragment):
    response = post_file(stack, ground_truth[0].path.read_bytes(), **params)
    assert_error(response, 422, "invalid_parameter")
    assert fragment in response.json()["error"]["message"]


def test_unknown_class_name(stack, ground_truth):
    response = post_file(stack, ground_truth[0].path.read_bytes(), classes="rust")
    assert_error(response, 400, "invalid_parameter")
    assert "known classes" in response.json()["error"]["message"]


def test_upload_past_the_limit_with_content_length(stack):
    assert_error(post_file(stack, b"\xff" * 7_000_000), 413, "file_too_large")


def test_upload_past_the_limit_is_cut_off_while_streaming(stack):
    """A chunked upload with no Content-Length is refused before the client has sent it all."""
    host, port = stack.host, stack.gateway_port
    boundary = "hostileboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    chunk = b"\xff" * 65536
    total_budget = 64 * 1024 * 1024
    sent = 0
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        sock.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        reply = b""
        deadline = time.monotonic() + 60
        while sent < total_budget and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(30)
        while True:
            head_end = reply.find(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", reply[:head_end], re.I) if head_end >= 0 else None
            if length and len(reply) >= head_end + 4 + int(length.group(1)):
                break
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(reply[head_end + 4 :])["error"]["code"] == "file_too_large"
    assert sent < 16 * 1024 * 1024, f"gateway read {sent} bytes before refusing"


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("RGBA", "WEBP"), ("P", "GIF"), ("CMYK", "JPEG"), ("RGB", "BMP"), ("RGB", "TIFF"), ("I;16", "PNG")],
)
def test_odd_modes_and_formats_are_served(stack, ground_truth, mode, fmt):
    truth = next(t for t in ground_truth if t.boxes)
    source = Image.open(truth.path).convert("RGB")
    image = (
        Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257)
        if mode == "I;16"
        else source.convert(mode)
    )
    response = post_file(stack, encode(image, fmt), f"sample.{fmt.lower()}")
    assert response.status_code == 200, response.text
    assert_valid_contract(response.json(), truth.width, truth.height)


def test_exif_rotated_photo_gets_upright_boxes(stack, ground_truth):
    """A phone stores pixels sideways plus an EXIF tag; boxes must refer to the upright picture."""
    truth = next(t for t in ground_truth if t.boxes)
    upright = Image.open(truth.path).convert("RGB")
    stored = upright.rotate(90, expand=True)  # pixels as the sensor wrote them
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    response = post_file(stack, encode(stored, "JPEG", quality=95, exif=exif.tobytes()), "phone.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": truth.width, "height": truth.height}
    assert_finds_ground_truth(body["detections"], truth)
