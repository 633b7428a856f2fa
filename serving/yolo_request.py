"""Per-request parameters and serving defaults for the YOLO handler.

Plain code with no TorchServe dependency, so tests can call it directly; shipped in the
.mar next to ``yolo_handler.py`` (TorchServe wants that module to define one class only).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from yolo_contract import FORMATS, HEADER_PREFIX, MASK_FORMATS, MAX_DET_LIMIT, TASK_PARAMETERS, TASKS
from yolo_image import RequestError


@dataclass(frozen=True)
class HandlerConfig:
    """Serving defaults read from the archive's model-config YAML (``handler:`` section)."""

    task: str = "detect"
    format: str = "pt"  # what the archive carries (package_mar.sh --format); the handler loads whichever it is
    architecture: str = "yolo"  # "rtdetr" for RT-DETR weights: stretched input, no NMS
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 100
    threads: int = 1
    lone_threads: int | None = None  # threads for a batch of one image; None: the same as ``threads``
    cpu_pinning: bool = False
    reduced_decode: bool = False  # JPEGs decoded at the smallest DCT scale the model's resize allows (not for .pt)
    max_pixels: int = 40_000_000
    top_k: int = 5
    kpt_names: tuple[str, ...] | None = None

    @classmethod
    def from_yaml(cls, section: dict | None) -> HandlerConfig:
        section = section or {}
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown handler key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the handler knows: {', '.join(cls.__dataclass_fields__)}"
            )
        known = dict(section)
        if known.get("kpt_names") is not None:
            known["kpt_names"] = tuple(str(n) for n in known["kpt_names"])
        config = cls(**known)
        if config.task not in TASKS:
            raise ValueError(f"handler.task must be one of {', '.join(TASKS)}, got {config.task!r}")
        if config.format not in FORMATS:
            raise ValueError(f"handler.format must be one of {', '.join(FORMATS)}, got {config.format!r}")
        if config.imgsz % 32:
            raise ValueError(f"handler.imgsz must be a multiple of 32, got {config.imgsz}")
        return config


@dataclass(frozen=True)
class Params:
    """Post-processing parameters of one request."""

    conf: float
    iou: float
    max_det: int
    classes: tuple[int, ...] | None
    masks: str = "polygon"
    top_k: int = 5


def parse_params(headers: dict[str, str], config: HandlerConfig, names: dict[int, str]) -> Params:
    """Read ``X-Yolo-*`` headers (any case); missing ones use the archive's defaults.

    A parameter the model's task has no use for (``top_k`` on a detector, ``conf`` on a
    classifier) is a 422 that names the task: silently ignoring it would hide a client bug.
    """
    values = {
        k.lower()[len(HEADER_PREFIX) :].replace("-", "_"): v
        for k, v in headers.items()
        if k.lower().startswith(HEADER_PREFIX)
    }
    allowed = TASK_PARAMETERS[config.task]
    for name in sorted(values):
        if name not in allowed:
            raise RequestError(
                422,
                "parameter_not_applicable",
                f"{name} does not apply to this {config.task} model; it takes: {', '.join(allowed)}.",
            )
    return Params(
        conf=_unit_float(values.get("conf"), config.conf, "conf"),
        iou=_unit_float(values.get("iou"), config.iou, "iou"),
        max_det=_bounded_int(values.get("max_det"), config.max_det, "max_det", MAX_DET_LIMIT),
        classes=parse_classes(values.get("classes"), names),
        masks=_choice(values.get("masks"), "polygon", "masks", MASK_FORMATS),
        top_k=_bounded_int(values.get("top_k"), config.top_k, "top_k", max(len(names), 1)),
    )


def _choice(raw: str | None, default: str, name: str, choices: tuple[str, ...]) -> str:
    if raw is None or raw == "":
        return default
    if raw.strip().lower() not in choices:
        raise RequestError(400, "invalid_parameter", f"{name} must be one of {', '.join(choices)}, got {raw!r}.")
    return raw.strip().lower()


def _unit_float(raw: str | None, default: float, name: str) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(400, "invalid_parameter", f"{name} must be a number between 0 and 1, got {raw!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise RequestError(400, "invalid_parameter", f"{name} must be between 0 and 1, got {raw!r}.")
    return value


def _bounded_int(raw: str | None, default: int, name: str, limit: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit() or not 1 <= int(raw) <= limit:
        raise RequestError(400, "invalid_parameter", f"{name} must be an integer from 1 to {limit}, got {raw!r}.")
    return int(raw)


def parse_classes(raw: str | None, names: dict[int, str]) -> tuple[int, ...] | None:
    """Comma-separated class names or ids to keep; ``None`` keeps every class."""
    if raw is None or not raw.strip():
        return None
    by_name = {name.lower(): class_id for class_id, name in names.items()}
    wanted = []
    for token in (t.strip() for t in raw.split(",") if t.strip()):
        if token.isdigit() and int(token) in names:
            wanted.append(int(token))
        elif token.lower() in by_name:
            wanted.append(by_name[token.lower()])
        else:
            known = ", ".join(f"{i}={n}" for i, n in sorted(names.items()))
            raise RequestError(400, "invalid_parameter", f"Unknown class {token!r}; known classes: {known}.")
    return tuple(sorted(set(wanted)))


def request_payload(row: dict) -> bytes:
    """The image bytes of one request: a raw body, a form field, or base64 text (KServe's v1 protocol)."""
    candidates = [row.get(key) for key in ("data", "body", "file")] + list(row.values())
    for value in candidates:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
    for value in candidates:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error:
                break
    raise RequestError(415, "invalid_image", "The request body must be the raw bytes of an image.")
