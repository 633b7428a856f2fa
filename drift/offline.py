"""An archive's handler run outside TorchServe, the way a worker runs it: for references, replays and tests.

``handler_for`` unpacks a .mar and initialises its ``YoloHandler`` from the unpacked files, as
a TorchServe worker does; ``answers`` drives preprocess, inference and postprocess on a
batch of image bytes. The drift signals of a reference or of a replayed stream therefore come
from the very decode, model and answer-building code the archive serves.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from serving.yolo_files import archive_config  # noqa: E402

SERVING = Path(__file__).resolve().parent.parent / "serving"


def handler_for(archive: Path, unpack_to: Path):
    """The handler of ``archive``, initialised from its files unpacked into ``unpack_to``."""
    if str(SERVING) not in sys.path:
        sys.path.insert(0, str(SERVING))  # the handler's modules import each other flat, as inside the .mar
    from ts.context import Context

    from yolo_handler import YoloHandler

    with zipfile.ZipFile(archive) as mar:
        mar.extractall(unpack_to)
    manifest = json.loads((unpack_to / "MAR-INF" / "MANIFEST.json").read_text())
    config = archive_config(archive)
    context = Context(
        manifest["model"]["modelName"], str(unpack_to), manifest, 1, None, "0.12.0", model_yaml_config=config
    )
    handler = YoloHandler()
    handler.initialize(context)
    return handler


def answers(handler, images: list[bytes], headers: dict[str, str] | None = None) -> list[dict]:
    """One batch of image bytes through the handler's preprocess, inference and postprocess."""
    from ts.context import RequestProcessor

    handler.context.request_processor = [RequestProcessor(headers or {}) for _ in images]
    handler.context.request_ids = {i: f"req-{i}" for i in range(len(images))}
    rows = [{"body": data} for data in images]
    return handler.postprocess(handler.inference(handler.preprocess(rows)))


def signals_of(handler, images: Iterable[bytes]) -> tuple[list[dict], list[str]]:
    """Each image's drift signals, one request at a time as a lone camera sends them; and the refusals."""
    found, refused = [], []
    for data in images:
        (body,) = answers(handler, [data])
        if body.get("status") == "success":
            found.append(body["signals"])
        else:
            refused.append(body.get("error", {}).get("message", "refused"))
    return found, refused
