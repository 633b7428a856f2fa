"""``package_mar.sh --reference DIR``: a drift reference computed by the archive itself, stored inside it.

The freshly built .mar is unpacked and its own handler (the same decode, the same exported
model, the same answer-building code it will serve with) runs every image of ``DIR`` one at a
time; their signals are split into a fitting and a calibration half and calibrated
(``drift.calibrate``), and the result is added to the archive as ``drift-reference.json``,
which the handler hands the gateway. Fewer than ``ADVISED_IMAGES`` images calibrate a less
trustworthy threshold: a warning says so.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from pathlib import Path

from drift.calibrate import build_reference
from drift.detector import DEFAULT_TARGET_ERT, MARGIN, Reference
from drift.offline import handler_for, signals_of
from serving.yolo_contract import DRIFT_REFERENCE_FILE
from serving.yolo_files import image_files

ADVISED_IMAGES = 1000
MIN_IMAGES = 200  # below this the calibration half cannot support any useful threshold


def reference_images(folder: Path, log=print) -> list[Path]:
    """The reference images of ``folder``, or ValueError naming the folder and what is wrong; a warning
    through ``log`` when there are fewer than advised."""
    if not folder.is_dir():
        raise ValueError(f"--reference {folder}: not a folder of images")
    images = image_files(folder)
    if len(images) < MIN_IMAGES:
        raise ValueError(
            f"--reference {folder} has {len(images)} images; a drift reference needs at least {MIN_IMAGES} "
            f"(advised: {ADVISED_IMAGES} or more, as the model will see them on the line)"
        )
    if len(images) < ADVISED_IMAGES:
        log(
            f"warning: --reference {folder} has {len(images)} images; with fewer than {ADVISED_IMAGES} the "
            "predicted false-alarm rate is less reliable"
        )
    return images


def attach_reference(archive: Path, folder: Path, images: list[Path], seed: int = 0, log=print) -> Reference:
    """Compute ``archive``'s drift reference from ``images`` (``reference_images(folder)``) and add it; ValueError
    when the model refuses some of them."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        handler = handler_for(archive, Path(tmp))
        rows, refused = signals_of(handler, (path.read_bytes() for path in images))
    if refused:
        raise ValueError(f"--reference {folder}: the model refused {len(refused)} images, e.g. {refused[0]}")
    measured = time.perf_counter() - started
    reference = build_reference(rows, seed)
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as mar:
        mar.writestr(DRIFT_REFERENCE_FILE, json.dumps(reference.stored(), separators=(",", ":")))
    _, predicted = reference.threshold(DEFAULT_TARGET_ERT, MARGIN)
    log(
        f"drift reference ok: {len(rows)} images ({reference.fit_images} fit, {reference.calibration_images} "
        f"calibrate) in {measured:.0f} s, {len(reference.signals)} signals, predicted ERT {predicted:,.0f} requests "
        f"at the default target {DEFAULT_TARGET_ERT:,}"
    )
    return reference
