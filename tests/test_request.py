"""Per-request parameters and archive defaults, without a server."""

from __future__ import annotations

import pytest

from yolo_image import RequestError
from yolo_request import HandlerConfig, parse_classes, parse_params, request_payload

NAMES = {0: "scratch", 1: "dent", 2: "stain"}
CONFIG = HandlerConfig(imgsz=320, conf=0.25, iou=0.45, max_det=100)


def test_defaults_come_from_the_archive_config():
    params = parse_params({}, CONFIG, NAMES)
    assert (params.conf, params.iou, params.max_det, params.classes) == (0.25, 0.45, 100, None)


def test_headers_override_in_any_case():
    headers = {"X-Yolo-Conf": "0.6", "x-yolo-iou": "0.3", "X-YOLO-MAX-DET": "5", "X-Yolo-Classes": "stain, 0"}
    params = parse_params(headers, CONFIG, NAMES)
    assert (params.conf, params.iou, params.max_det, params.classes) == (0.6, 0.3, 5, (0, 2))


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Yolo-Conf": "1.5"},
        {"X-Yolo-Conf": "abc"},
        {"X-Yolo-Iou": "-0.1"},
        {"X-Yolo-Max-Det": "0"},
        {"X-Yolo-Max-Det": "5000"},
        {"X-Yolo-Max-Det": "2.5"},
        {"X-Yolo-Classes": "rust"},
        {"X-Yolo-Classes": "7"},
    ],
)
def test_bad_parameters_are_400_with_a_reason(headers):
    with pytest.raises(RequestError) as err:
        parse_params(headers, CONFIG, NAMES)
    assert err.value.status == 400 and err.value.code == "invalid_parameter" and err.value.message


def test_unknown_class_message_lists_the_known_ones():
    with pytest.raises(RequestError, match="0=scratch, 1=dent, 2=stain"):
        parse_classes("rust", NAMES)


def test_config_reads_the_handler_section_and_checks_the_size():
    config = HandlerConfig.from_yaml({"imgsz": 416, "conf": 0.4, "format": "onnx"})
    assert (config.imgsz, config.conf, config.iou, config.format) == (416, 0.4, 0.7, "onnx")
    with pytest.raises(ValueError, match="multiple of 32"):
        HandlerConfig.from_yaml({"imgsz": 300})
    with pytest.raises(ValueError, match="unknown handler key 'confidence'; the handler knows: task, format"):
        HandlerConfig.from_yaml({"confidence": 0.4})
    with pytest.raises(ValueError, match="handler.format must be one of pt, torchscript, onnx, openvino"):
        HandlerConfig.from_yaml({"format": "tflite"})


def test_payload_from_raw_body_or_form_field():
    assert request_payload({"body": bytearray(b"abc")}) == b"abc"
    assert request_payload({"data": b"xyz"}) == b"xyz"
    assert request_payload({"file": b"123"}) == b"123"
    assert request_payload({"data": "aW1hZ2U="}) == b"image"  # KServe v1 sends base64 text
    with pytest.raises(RequestError) as err:
        request_payload({"body": {"json": "object"}})
    with pytest.raises(RequestError):
        request_payload({"body": "not base64 at all!"})
    assert err.value.status == 415


@pytest.mark.parametrize(
    ("task", "header", "value"),
    [("detect", "X-Yolo-Top-K", "3"), ("classify", "X-Yolo-Conf", "0.5"), ("pose", "X-Yolo-Masks", "rle")],
)
def test_a_parameter_the_task_does_not_take_is_a_422_naming_it(task, header, value):
    config = HandlerConfig(task=task, imgsz=320)
    with pytest.raises(RequestError) as refused:
        parse_params({header: value}, config, {0: "a", 1: "b"})
    assert refused.value.status == 422 and refused.value.code == "parameter_not_applicable"
    assert task in refused.value.message and header[len("X-Yolo-") :].lower().replace("-", "_") in refused.value.message


def test_task_parameters_are_read_and_checked():
    segment = parse_params({"x-yolo-masks": "RLE"}, HandlerConfig(task="segment", imgsz=320), {0: "a"})
    assert segment.masks == "rle"
    classify = parse_params({"X-Yolo-Top-K": "2"}, HandlerConfig(task="classify", imgsz=224), {0: "a", 1: "b", 2: "c"})
    assert classify.top_k == 2
    for bad in ({"X-Yolo-Top-K": "9"}, {"X-Yolo-Top-K": "0"}):
        with pytest.raises(RequestError, match="top_k"):
            parse_params(bad, HandlerConfig(task="classify", imgsz=224), {0: "a", 1: "b", 2: "c"})
    with pytest.raises(RequestError, match="masks must be one of"):
        parse_params({"X-Yolo-Masks": "bitmap"}, HandlerConfig(task="segment", imgsz=320), {0: "a"})


def test_an_unknown_task_in_the_archive_config_is_refused():
    with pytest.raises(ValueError, match="handler.task"):
        HandlerConfig.from_yaml({"task": "depth", "imgsz": 320})
