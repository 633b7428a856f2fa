"""``package_mar.sh --reference DIR``: a drift reference computed by the archive itself, stored inside it.

The freshly built .mar is unpacked and its own handler (the same decode, the same exported
model, the same answer-building code it will serve with) runs every image of ``DIR`` one at a
time; their signals are split into a fitting and a calibration half and calibrated
(``drift.calibrate``), and the result is added to the archive as ``drift-reference.json``,
which the handler hands the gateway. Fewer than ``ADVISED_IMAGES`` images calibrate a less
trustworthy threshold: a warning says so.

A reference is a function of what the archive serves with (the source weights, the format and
settings of ``model-config.yaml``, the handler's modules), of the installed libraries that
export and run the model, of the drift code, of the images' bytes and of the seed. Its key
(``reference_key``) digests all of these, and the reference is kept under that key in
``$DRIFT_REFERENCE_CACHE`` (default ``var/cache/drift-references``; empty turns it off): packaging
the same model with the same images again (another version number, another gate set, the
Compose proof and the live drift tests of one ``make test``) reads it instead of running the
images through the model again. Anything that could change one signal changes the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

from drift.calibrate import build_reference
from drift.detector import DEFAULT_TARGET_ERT, MARGIN, Reference
from drift.offline import handler_for, signals_of
from serving.yolo_contract import DRIFT_REFERENCE_FILE
from serving.yolo_files import image_files

ADVISED_IMAGES = 1000
MIN_IMAGES = 200  # below this the calibration half cannot support any useful threshold
DRIFT = Path(__file__).resolve().parent
CACHE = DRIFT.parent / "var" / "cache" / "drift-references"
# the libraries that export the model, run it and decode the images: their versions are part of the key
LIBRARIES = (
    "ultralytics",
    "torch",
    "torchvision",
    "openvino",
    "onnxruntime",
    "numpy",
    "opencv-python",
    "pillow",
    "pillow-heif",
)


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


def reference_key(archive: Path, images: list[Path], seed: int) -> str:
    """A digest of everything ``archive``'s reference from ``images`` depends on (see the module's docstring).

    The exported model's own files are not part of it: an export names its graph's nodes anew in every
    process. The source weights (their sha256 in ``lineage.json``), the format and settings that export
    them, and the libraries' versions determine them.
    """
    digest = hashlib.sha256(b"drift-reference 1\0")

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        add("weights", json.loads(mar.read("lineage.json"))["weights_sha256"].encode())
        for name in sorted(n for n in names if n == "model-config.yaml" or (n.endswith(".py") and "/" not in n)):
            add(name, mar.read(name))
    for code in sorted(DRIFT.glob("*.py")):
        add(f"drift/{code.name}", code.read_bytes())
    for library in LIBRARIES:
        try:
            add(library, metadata.version(library).encode())
        except metadata.PackageNotFoundError:
            add(library, b"absent")
    add("seed", str(seed).encode())
    for path in images:
        add("image", hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_folder() -> Path | None:
    """Where references are kept by key (``$DRIFT_REFERENCE_CACHE``; set empty, none are kept)."""
    chosen = os.environ.get("DRIFT_REFERENCE_CACHE")
    if chosen is None:
        return CACHE
    return Path(chosen) if chosen else None


def attach_reference(archive: Path, folder: Path, images: list[Path], seed: int = 0, log=print) -> Reference:
    """Add ``archive``'s drift reference from ``images`` (``reference_images(folder)``): the cached one of the same
    key, else computed (and cached); ValueError when the model refuses some of them."""
    started = time.perf_counter()
    key, cache = reference_key(archive, images, seed), cache_folder()
    kept = cache / f"{key}.json" if cache else None
    reference = kept_reference(kept, log) if kept is not None else None
    if reference is not None:
        how = f"the same model, code and images' reference, kept in {kept} (DRIFT_REFERENCE_CACHE)"
    else:
        with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
            handler = handler_for(archive, Path(tmp))
            rows, refused = signals_of(handler, (path.read_bytes() for path in images))
        if refused:
            raise ValueError(f"--reference {folder}: the model refused {len(refused)} images, e.g. {refused[0]}")
        reference = build_reference(rows, seed)
        how = f"computed in {time.perf_counter() - started:.0f} s"
        if kept is not None:
            keep(kept, reference, log)
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as mar:
        mar.writestr(DRIFT_REFERENCE_FILE, json.dumps(reference.stored(), separators=(",", ":")))
    _, predicted = reference.threshold(DEFAULT_TARGET_ERT, MARGIN)
    log(
        f"drift reference ok: {reference.images} images ({reference.fit_images} fit, {reference.calibration_images} "
        f"calibrate), {how}; {len(reference.signals)} signals, predicted ERT {predicted:,.0f} requests "
        f"at the default target {DEFAULT_TARGET_ERT:,}"
    )
    return reference


def kept_reference(path: Path, log=print) -> Reference | None:
    """The reference kept at ``path``; None when there is none, or (with a warning through ``log``) when it
    cannot be read, so that it is computed again and written over."""
    if not path.is_file():
        return None
    try:
        return Reference.from_stored(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"warning: the kept drift reference {path} cannot be read ({type(exc).__name__}); computing it again")
        return None


def keep(path: Path, reference: Reference, log=print) -> None:
    """Write ``reference`` to the cache at ``path`` whole or not at all (lanes of one run package at once); a cache
    that cannot be written is a warning through ``log``, not a failed packaging."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(reference.stored(), separators=(",", ":")))
        os.replace(partial, path)
    except OSError as exc:
        log(f"warning: the drift reference could not be kept in {path.parent} ({exc}); set DRIFT_REFERENCE_CACHE")
