"""What every dataset of captures shares: its files (data.yaml, captures.jsonl, labelled.json), the error
that names a file and its fix, the summaries of an export and an import, and the small steps each format takes
(a capture's id, bytes, image suffix and size; writing a file whole; linking a file into a subset)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from serving.yolo_contract import TASKS
from serving.yolo_files import MappingError, is_image_file, media_suffix, read_mapping

LABELLED_FILE = "labelled.json"
CAPTURES_FILE = "captures.jsonl"
DATA_FILE = "data.yaml"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ReadBlob = Callable[[dict], bytes]


class DatasetError(Exception):
    """A capture, a label or a dataset that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: ``path`` (data.yaml, the classify folder or tasks.json), images written,
    rows skipped because their answer was not a success, and images whose person's label was kept."""

    path: Path
    images: int
    skipped: int
    kept: int = 0

    def __str__(self) -> str:
        kept = f", {self.kept} person-labelled kept" if self.kept else ""
        return f"{self.path}: {self.images} images, {self.skipped} skipped (answer not a success){kept}"


@dataclass(frozen=True)
class ImportSummary:
    """What an import labelled: how many images, their ids, the sources that matched no image, and the
    Label Studio tasks that matched an image but had no (non-cancelled) annotation."""

    labelled: int
    ids: list[str]
    unknown: list[str]
    unannotated: list[str] = field(default_factory=list)


def check_task(task: str) -> None:
    if task not in TASKS:
        raise DatasetError(f"task {task!r} is not one of {', '.join(TASKS)}: pass the model's task")


def class_names(names: dict[int, str] | list[str]) -> dict[int, str]:
    """The class names as {0: name, 1: name, ...}, ids contiguous from 0."""
    found = dict(enumerate(names)) if isinstance(names, list | tuple) else {int(k): str(v) for k, v in names.items()}
    if sorted(found) != list(range(len(found))) or not found:
        raise DatasetError(f"class names {names!r} are not ids 0..n-1: pass the model's names (YOLO(...).names)")
    return dict(sorted(found.items()))


def capture_id(row: dict) -> str:
    capture = str(row.get("id", ""))
    if not ID_RE.match(capture):
        raise DatasetError(
            f"capture id {capture!r} is not a file name (letters, digits, - and _): fix the manifest row"
        )
    return capture


def image_suffix(row: dict) -> str:
    """The file suffix of a capture's image (``.jpg``), from its media type."""
    try:
        return media_suffix(row.get("media_type"))
    except ValueError as exc:
        raise DatasetError(f"capture {row.get('id')}: {exc}: leave the capture out") from None


def capture_bytes(row: dict, read_blob: ReadBlob) -> bytes:
    try:
        data = read_blob(row)
    except (OSError, KeyError) as error:
        raise DatasetError(
            f"capture {row.get('id')}: image {row.get('sha256')} unreadable ({error}): "
            "restore the capture store or leave the row out"
        ) from error
    if row.get("sha256") and hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise DatasetError(
            f"capture {row.get('id')}: the bytes read do not hash to {row['sha256']}: "
            "the capture store is damaged, leave the row out"
        )
    return data


def answer_size(row: dict) -> tuple[int, int]:
    """The upright image size the answer refers to."""
    image = row["answer"].get("image") or {}
    width, height = image.get("width", row.get("width")), image.get("height", row.get("height"))
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise DatasetError(f"capture {row.get('id')}: no image size in the answer or the row: fix the manifest row")
    return width, height


def successful_rows(rows: Iterable[dict], task: str) -> tuple[list[dict], int]:
    """The rows whose answer is a success of ``task``, and how many were skipped."""
    good, skipped, seen = [], 0, set()
    for row in rows:
        answer = row.get("answer")
        if not isinstance(answer, dict) or answer.get("status") != "success":
            skipped += 1
            continue
        if answer.get("task") != task:
            raise DatasetError(
                f"capture {row.get('id')} was answered by a {answer.get('task')!r} model, not {task!r}: "
                "export the captures of one model at a time"
            )
        capture = capture_id(row)
        if capture in seen:
            raise DatasetError(f"capture {capture} is listed twice: export each manifest row once")
        seen.add(capture)
        good.append(row)
    return good, skipped


def write_whole(path: Path, data: bytes | str) -> None:
    """Write a file whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def label_line(class_id: int, values: Iterable[float]) -> str:
    return " ".join([str(class_id), *(f"{v:.6f}" for v in values)])


def read_dataset_yaml(path: Path) -> dict:
    try:
        return read_mapping(path)
    except MappingError as error:
        raise DatasetError(f"{error}: export the dataset again with export_yolo") from None


def read_captures(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    rows = {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if text.strip():
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}:{number}: not JSON ({error}): remove the line or export again") from error
            rows[str(row.get("id"))] = row
    return rows


def write_captures(path: Path, rows: dict[str, dict]) -> None:
    plain = [{k: v for k, v in row.items() if not isinstance(v, bytes | bytearray)} for row in rows.values()]
    write_whole(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in plain))


def drop_caches(dataset: Path) -> None:
    """Ultralytics' label cache (labels.cache beside labels/) would outlive changed labels; remove it."""
    for cache in dataset.glob("*.cache"):
        cache.unlink(missing_ok=True)


def labelled_ids(dataset: Path) -> dict[str, dict]:
    """The images a person labelled: {id: {"when", "who", "source"}} from ``dataset/labelled.json`` ({} if none)."""
    path = Path(dataset) / LABELLED_FILE
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not JSON ({error}): restore it from a backup or re-import the labels") from error
    if not isinstance(found, dict):
        raise DatasetError(f"{path}: not an object of ids: restore it from a backup or re-import the labels")
    return found


def dataset_images(dataset: Path, classifies: bool) -> dict[str, list[Path]]:
    """The dataset's images by id (``classifies``, a dataset of class folders: the image in train/ and in val/)."""
    found: dict[str, list[Path]] = {}
    if classifies:
        files = [p for split in ("train", "val") for p in sorted((dataset / split).glob("*/*"))]
    else:
        files = sorted((dataset / "images").glob("*"))
    for path in files:
        if is_image_file(path):
            found.setdefault(path.stem, []).append(path)
    if not found:
        layout = "train/<class>/" if classifies else "images/"
        raise DatasetError(f"{dataset}: no images under {layout}: import into a dataset that export_yolo wrote")
    return found


def link(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target`` (folders made), copying across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
