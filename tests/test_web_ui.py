"""The try-the-model page as a person uses it: Debian's Chromium, driven by Playwright, against the real stack.

Every count the page shows is checked against ``POST /predict`` called directly with the same image and
parameters, so the page can only pass by drawing what the API answered. Screenshots land in
reports/screenshots/ for a human to look at.
"""

from __future__ import annotations

import base64
import contextlib
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from operations.archives import archive_for
from operations.releases import load_version
from operations.stack import free_port, stop_service
from tests.helpers import ROOT, package

pytestmark = pytest.mark.integration

SCREENSHOTS = ROOT / "reports" / "screenshots"
FINISHED = re.compile(r"^(done|error)$")
EXIF_ORIENTATION = 0x0112
DEFAULT_PARAMS = {"conf": "0.25", "iou": "0.7"}  # the page's slider positions on load


def api_predict(url: str, image: Path, headers: dict | None = None, **params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/predict", files={"file": (image.name, image.read_bytes())}, params=params, headers=headers, timeout=60
    )


def wait_for_answer(page: Page) -> str:
    """Every action that asks the gateway sets body[data-state]=busy at once; wait until it settles."""
    expect(page.locator("body")).to_have_attribute("data-state", FINISHED, timeout=60_000)
    return page.locator("body").get_attribute("data-state")


def upload(page: Page, image: Path) -> str:
    page.set_input_files("#file", str(image))
    return wait_for_answer(page)


def drawn(page: Page) -> int:
    return int(page.locator("#overlay").get_attribute("data-box-count"))


def table_classes(page: Page) -> list[str]:
    return [text.strip() for text in page.locator("#detections tbody tr td:nth-child(2)").all_inner_texts()]


def assert_page_shows(page: Page, body: dict) -> None:
    """The page's boxes, table and answering version are exactly the API's answer."""
    detections = body["detections"]
    assert drawn(page) == len(detections)
    assert table_classes(page) == [d["class"] for d in detections]
    expect(page.locator("#answered-version")).to_have_text(f"v{body['model']['version']}")
    canvas = page.locator("#overlay")
    size = [body["image"]["width"], body["image"]["height"]]
    assert canvas.evaluate("c => [c.width, c.height]") == size
    assert page.locator("#photo").evaluate("img => [img.naturalWidth, img.naturalHeight]") == size
    # Each box's left edge, half-way down, is painted on the canvas where the API put it.
    edges = [[int(d["bbox"][0]), int((d["bbox"][1] + d["bbox"][3]) / 2)] for d in detections]
    alphas = canvas.evaluate(
        "(c, points) => points.map(([x, y]) => c.getContext('2d').getImageData(x, y, 1, 1).data[3])", edges
    )
    assert all(alpha > 0 for alpha in alphas), list(zip(edges, alphas, strict=True))
    overlay, photo = canvas.bounding_box(), page.locator("#photo").bounding_box()
    assert all(abs(overlay[k] - photo[k]) <= 1 for k in ("x", "y", "width", "height")), (overlay, photo)


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def busiest(ground_truth):
    return max(ground_truth, key=lambda truth: len(truth.boxes))


def test_page_and_its_files_are_served_outside_the_api_schema(stack):
    page = httpx.get(f"{stack.gateway_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing loads from elsewhere
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{stack.gateway_url}/static/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    for other in ("index.html", "..%2Fmain.py", "missing.js"):
        refused = httpx.get(f"{stack.gateway_url}/static/{other}", timeout=10)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    paths = httpx.get(f"{stack.gateway_url}/openapi.json", timeout=10).json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


def test_page_draws_the_boxes_the_api_returns(stack, page, ground_truth):
    truth = busiest(ground_truth)
    page.goto(stack.gateway_url)
    expect(page.locator("#models-status")).to_contain_text("v1.0 (default)")
    drift = httpx.get(f"{stack.gateway_url}/models/yolo/drift", timeout=30).json()["versions"][0]
    shown = "no reference" if drift["state"] == "no_reference" else drift["state"]
    expect(page.locator("#drift-status")).to_contain_text(f"Drift: v1.0 {shown}")
    assert upload(page, truth.path) == "done"
    expected = api_predict(stack.gateway_url, truth.path, **DEFAULT_PARAMS).json()
    assert expected["detections"], "a sample with defects must give the page something to draw"
    assert_page_shows(page, expected)
    assert page.locator("#detections tbody tr").count() == len(expected["detections"])
    expect(page.locator("#summary")).to_contain_text(re.compile(r"server \d+ ms · round trip \d+ ms"))
    assert screenshot(page, "web_ui_boxes.png").stat().st_size > 0


def test_confidence_slider_follows_the_api(stack, page, ground_truth):
    truth = busiest(ground_truth)
    page.goto(stack.gateway_url)
    assert upload(page, truth.path) == "done"
    before = api_predict(stack.gateway_url, truth.path, **DEFAULT_PARAMS).json()["detections"]
    # Just above the weakest detection: at least that one must disappear, and the page must follow.
    stricter = f"{int(min(d['confidence'] for d in before) * 100 + 1) / 100:.2f}"
    page.fill("#conf", stricter)
    expect(page.locator("#conf-value")).to_have_text(stricter)
    assert wait_for_answer(page) == "done"
    after = api_predict(stack.gateway_url, truth.path, conf=stricter, iou="0.7").json()
    assert len(after["detections"]) < len(before)
    assert_page_shows(page, after)
    expect(page.locator("#compare tbody tr")).to_have_count(2)


def test_dropped_exif_rotated_photo_is_boxed_upright(stack, page, ground_truth, tmp_path):
    """A phone photo stored sideways with an EXIF orientation: browser and gateway both turn it upright."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
    photo = tmp_path / "sideways.jpg"
    truth = busiest(ground_truth)
    with Image.open(truth.path) as upright:
        upright.transpose(Image.Transpose.ROTATE_90).save(photo, exif=exif.tobytes(), quality=95)
    page.goto(stack.gateway_url)
    transfer = page.evaluate_handle(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [base64.b64encode(photo.read_bytes()).decode(), photo.name],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    assert wait_for_answer(page) == "done"
    expected = api_predict(stack.gateway_url, photo, **DEFAULT_PARAMS).json()
    assert expected["image"] == {"width": truth.width, "height": truth.height}
    assert expected["detections"]
    assert_page_shows(page, expected)


@pytest.mark.parametrize(
    ("name", "content", "status", "code", "heading"),
    [
        ("notes.jpg", b"meeting notes, not a picture\n" * 10, 415, "invalid_image", "Not an image"),
        ("huge.jpg", b"\xff" * 7_000_000, 413, "file_too_large", "Too large"),
    ],
)
def test_rejected_upload_shows_the_gateway_message(
    stack, page, ground_truth, tmp_path, name, content, status, code, heading
):
    page.goto(stack.gateway_url)
    assert upload(page, busiest(ground_truth).path) == "done"
    bad = tmp_path / name
    bad.write_bytes(content)
    with page.expect_response(re.compile(r"/predict\?")) as answer:
        assert upload(page, bad) == "error"
    assert answer.value.status == status
    shown = page.locator("#error").inner_text()
    assert shown == f"{heading} ({status} {code}): {answer.value.json()['error']['message']}"
    assert drawn(page) == 0 and page.locator("#stage").is_hidden() and page.locator("#detections").is_hidden()
    direct = api_predict(stack.gateway_url, bad)
    assert (direct.status_code, direct.json()["error"]["code"]) == (status, code)


def test_pinning_a_version_compares_v1_and_v2(stack, page, ground_truth):
    truth = busiest(ground_truth)
    with second_version(stack, "2.0"):
        page.goto(stack.gateway_url)
        expect(page.locator("#version option")).to_have_text(["Not pinned (default v1.0)", "v1.0 (default)", "v2.0"])
        assert upload(page, truth.path) == "done"
        expect(page.locator("#answered-version")).to_have_text("v1.0")
        for version in ("2.0", "1.0"):
            with page.expect_request(re.compile(r"/predict\?")) as sent:
                page.select_option("#version", version)
            assert f"version={version}" in sent.value.url
            assert wait_for_answer(page) == "done"
            expected = api_predict(stack.gateway_url, truth.path, version=version, **DEFAULT_PARAMS).json()
            assert expected["model"]["version"] == version
            assert_page_shows(page, expected)
        versions = page.locator("#compare tbody tr td:first-child").all_inner_texts()
        assert versions == ["yolo v1.0", "yolo v2.0", "yolo v1.0"]
        screenshot(page, "web_ui_compare.png")


@contextlib.contextmanager
def second_version(stack, version: str):
    """Load ``version`` next to the default in the session's TorchServe; unload it afterwards if we loaded it."""
    with stack.torchserve() as ts:
        if version in ts.loaded_versions(stack.model_name):
            yield
            return
        if not archive_for(stack, version).is_file():
            package(stack.model_store, version)
        load_version(stack, ts, version)
        try:
            yield
        finally:
            ts.unregister(stack.model_name, version)


def test_api_key_is_asked_for_and_remembered(stack, extra_gateway, page, ground_truth):
    truth = busiest(ground_truth)
    url = extra_gateway(GATEWAY_API_KEYS="secret-key").gateway_url
    page.goto(url)
    assert upload(page, truth.path) == "error"
    expect(page.locator("#error")).to_contain_text("API key needed (401 unauthorized):")
    expect(page.locator("#error")).to_contain_text("X-API-Key")
    page.fill("#api-key", "secret-key")
    page.press("#api-key", "Enter")
    assert wait_for_answer(page) == "done"
    expected = api_predict(url, truth.path, {"X-API-Key": "secret-key"}, **DEFAULT_PARAMS).json()
    assert_page_shows(page, expected)
    later = page.context.new_page()  # another tab: only local storage, not session storage, carries over
    later.goto(url)
    expect(later.locator("#api-key")).to_have_value("secret-key")
    assert upload(later, truth.path) == "done"
    assert drawn(later) == len(expected["detections"])


def test_backend_down_then_gateway_down(extra_gateway, page, ground_truth):
    nowhere = f"http://127.0.0.1:{free_port()}"
    gateway = extra_gateway(GATEWAY_TS_INFERENCE_URL=nowhere, GATEWAY_TS_MANAGEMENT_URL=nowhere)
    page.goto(gateway.gateway_url)
    expect(page.locator("#models-status")).to_contain_text("Models unavailable")
    assert upload(page, busiest(ground_truth).path) == "error"
    expect(page.locator("#error")).to_contain_text("Backend unavailable (503 torchserve_unavailable):")
    stop_service(gateway, "gateway")
    page.fill("#conf", "0.30")
    assert wait_for_answer(page) == "error"
    expect(page.locator("#error")).to_contain_text("Gateway unreachable:")
