"""YoloHandler on real weights inside TorchServe's own Context, without a server."""

from __future__ import annotations

import pytest
from ts.context import RequestProcessor

from tests.helpers import assert_finds_ground_truth, handler_for

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def handler(model_store, tmp_path_factory):
    """The handler initialised from the unpacked archive, the way a TorchServe worker does it."""
    return handler_for(model_store / "yolo_v1.0.mar", tmp_path_factory.mktemp("model-dir"))


def run_batch(handler, payloads: list[bytes], headers: list[dict] | None = None) -> tuple[list[dict], list[int]]:
    headers = headers or [{} for _ in payloads]
    handler.context.request_processor = [RequestProcessor(h) for h in headers]
    handler.context.request_ids = {i: f"req-{i}" for i in range(len(payloads))}
    outputs = handler.postprocess(handler.inference(handler.preprocess([{"body": p} for p in payloads])))
    statuses = [handler.context.get_response_status(i)[0] for i in range(len(payloads))]
    return outputs, statuses


def test_batch_in_batch_out_with_one_bad_item(handler, ground_truth):
    good = [t for t in ground_truth if t.boxes][:2]
    payloads = [good[0].path.read_bytes(), b"definitely not an image", good[1].path.read_bytes()]
    outputs, statuses = run_batch(handler, payloads)
    assert len(outputs) == 3
    assert statuses == [200, 415, 200]
    assert outputs[1] == {
        "status": "error",
        "error": {"code": "invalid_image", "message": outputs[1]["error"]["message"]},
    }
    for index, truth in ((0, good[0]), (2, good[1])):
        assert outputs[index]["image"] == {"width": truth.width, "height": truth.height}
        assert_finds_ground_truth(outputs[index]["detections"], truth)


def test_parameters_apply_per_request_within_a_batch(handler, ground_truth):
    truth = next(t for t in ground_truth if len({b["class"] for b in t.boxes}) >= 1)
    keep = truth.boxes[0]["class"]
    data = truth.path.read_bytes()
    outputs, statuses = run_batch(
        handler,
        [data, data, data],
        [{}, {"X-Yolo-Classes": keep}, {"X-Yolo-Max-Det": "1", "X-Yolo-Conf": "0.01"}],
    )
    assert statuses == [200, 200, 200]
    assert {d["class"] for d in outputs[1]["detections"]} == {keep}
    assert len(outputs[2]["detections"]) == 1
    assert outputs[2]["detections"][0]["confidence"] == max(d["confidence"] for d in outputs[0]["detections"])


def test_bad_parameter_fails_only_its_item(handler, ground_truth):
    data = ground_truth[0].path.read_bytes()
    outputs, statuses = run_batch(handler, [data, data], [{"X-Yolo-Conf": "2"}, {}])
    assert statuses == [400, 200]
    assert outputs[0]["error"]["code"] == "invalid_parameter"
    assert outputs[1]["status"] == "success"
