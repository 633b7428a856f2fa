"""Captured production images as datasets: the model's answers as pre-labels, Label Studio to correct them,
the corrected labels back in, and subsets for training and gate sets.

A capture is a manifest row (the gateway's capture store, issue 27) plus the original image bytes, which
``read_blob(row)`` returns. The layouts written here:

YOLO dataset (detect, segment, pose, obb), what ``YOLO(...).train(data=out/data.yaml)`` reads unchanged::

    out/data.yaml          path (absolute), train: images, val: images, names; pose also kpt_shape, kpt_names
                           (and flip_idx when given)
    out/images/<id>.<ext>  the original bytes of each capture (<ext> from its media type)
    out/labels/<id>.txt    YOLO labels: the model's answer (a pre-label) until a person's label is imported
    out/captures.jsonl     the exported manifest rows, one a line, to trace an image back to its request
    out/labelled.json      {id: {"when", "who", "source"}}: the images a person labelled (import_labels)

YOLO classify dataset, what ``YOLO(...).train(data=out)`` reads unchanged::

    out/train/<class>/<id>.<ext>, out/val/<class>/<id>.<ext>   every class has a folder, empty or not
    out/captures.jsonl, out/labelled.json

Label Studio project files::

    out/images/<id>.<ext>, out/tasks.json (tasks with predictions), out/labeling_config.xml

Pre-label rules: a pose keypoint is labelled visible (v=2) when the model's confidence in it is at least
``KEYPOINT_VISIBLE`` (0.5) and it lies in the image; otherwise it is written as not labelled (0 0 0), so
training neither learns a guess nor a wrong position. A segment detection's label is its largest polygon,
or its box as a 4-point polygon when it has none.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import quoteattr

import yaml
from PIL import Image, ImageOps

from serving.yolo_contract import TASKS, answer_items
from serving.yolo_files import MappingError, is_image_file, media_suffix, read_mapping

KEYPOINT_VISIBLE = 0.5  # a keypoint at or above this confidence is a visible (v=2) pre-label, else 0 0 0
TOLERANCE = 0.01  # normalised coordinates may stray this far outside [0, 1] (Ultralytics' own tolerance)
LABELLED_FILE = "labelled.json"
CAPTURES_FILE = "captures.jsonl"
DATA_FILE = "data.yaml"
LS_KEYPOINT_WIDTH = 0.5  # Label Studio's keypoint size, in percent of the image width
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


# ----------------------------------------------------------------------------------------------- small helpers


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise DatasetError(f"task {task!r} is not one of {', '.join(TASKS)}: pass the model's task")


def _names(names: dict[int, str] | list[str]) -> dict[int, str]:
    """The class names as {0: name, 1: name, ...}, ids contiguous from 0."""
    found = dict(enumerate(names)) if isinstance(names, list | tuple) else {int(k): str(v) for k, v in names.items()}
    if sorted(found) != list(range(len(found))) or not found:
        raise DatasetError(f"class names {names!r} are not ids 0..n-1: pass the model's names (YOLO(...).names)")
    return dict(sorted(found.items()))


def _capture_id(row: dict) -> str:
    capture = str(row.get("id", ""))
    if not ID_RE.match(capture):
        raise DatasetError(
            f"capture id {capture!r} is not a file name (letters, digits, - and _): fix the manifest row"
        )
    return capture


def _suffix(row: dict) -> str:
    """The file suffix of a capture's image (``.jpg``), from its media type."""
    try:
        return media_suffix(row.get("media_type"))
    except ValueError as exc:
        raise DatasetError(f"capture {row.get('id')}: {exc}: leave the capture out") from None


def _blob(row: dict, read_blob: ReadBlob) -> bytes:
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


def _size(row: dict) -> tuple[int, int]:
    """The upright image size the answer refers to."""
    image = row["answer"].get("image") or {}
    width, height = image.get("width", row.get("width")), image.get("height", row.get("height"))
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise DatasetError(f"capture {row.get('id')}: no image size in the answer or the row: fix the manifest row")
    return width, height


def _successful(rows: Iterable[dict], task: str) -> tuple[list[dict], int]:
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
        capture = _capture_id(row)
        if capture in seen:
            raise DatasetError(f"capture {capture} is listed twice: export each manifest row once")
        seen.add(capture)
        good.append(row)
    return good, skipped


def _write(path: Path, data: bytes | str) -> None:
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


def _unit(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)


def _line(class_id: int, values: Iterable[float]) -> str:
    return " ".join([str(class_id), *(f"{v:.6f}" for v in values)])


def _area(points: list) -> float:
    """Shoelace area of a polygon [[x, y], ...]."""
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True))) / 2


def _box_polygon(bbox: list[float]) -> list[list[float]]:
    x1, y1, x2, y2 = bbox
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def _polygon(detection: dict) -> list[list[float]]:
    """The detection's largest polygon (pixels), or its box as a 4-point polygon when it has none."""
    polygons = [p for p in detection.get("polygons") or [] if len(p) >= 3]
    return max(polygons, key=_area) if polygons else _box_polygon(detection["bbox"])


def _corners(detection: dict) -> list[list[float]]:
    """An obb detection's four corners (pixels): its ``corners``, else computed from its ``obb``."""
    if detection.get("corners"):
        return detection["corners"]
    o = detection["obb"]
    cos, sin = math.cos(o["angle"]), math.sin(o["angle"])
    u, v = (o["w"] / 2 * cos, o["w"] / 2 * sin), (-o["h"] / 2 * sin, o["h"] / 2 * cos)
    return [
        [o["cx"] + a * u[0] + b * v[0], o["cy"] + a * u[1] + b * v[1]] for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))
    ]


def _load_yaml(path: Path) -> dict:
    try:
        return read_mapping(path)
    except MappingError as error:
        raise DatasetError(f"{error}: export the dataset again with export_yolo") from None


def _read_captures(path: Path) -> dict[str, dict]:
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


def _write_captures(path: Path, rows: dict[str, dict]) -> None:
    plain = [{k: v for k, v in row.items() if not isinstance(v, bytes | bytearray)} for row in rows.values()]
    _write(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in plain))


def _drop_caches(dataset: Path) -> None:
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


# --------------------------------------------------------------------------------------------------- pose layout


def _keypoint_layout(
    rows: list[dict],
    names: dict[int, str],
    kpt_shape: list[int] | tuple[int, int] | None,
    kpt_names: dict[int, list[str]] | list[str] | None,
    existing: dict,
) -> tuple[list[int], dict[int, list[str]]]:
    """kpt_shape and the keypoint names of every class, in label order: ``kpt_names`` when given, else what
    an earlier export wrote, else the order of the answers' keypoints."""
    kpt_names = kpt_names if kpt_names is not None else existing.get("kpt_names")
    kpt_shape = list(kpt_shape) if kpt_shape is not None else existing.get("kpt_shape")
    if isinstance(kpt_names, list | tuple):
        kpt_names = dict.fromkeys(names, list(kpt_names))
    layout = {int(k): [str(n) for n in v] for k, v in (kpt_names or {}).items()}
    if not kpt_names:
        for row in rows:
            for detection in answer_items(row["answer"]):
                keypoints = detection.get("keypoints") or []
                if keypoints:
                    layout.setdefault(detection["class_id"], [str(k["name"]) for k in keypoints])
    if kpt_shape is None and layout:
        kpt_shape = [len(next(iter(layout.values()))), 3]
    if not kpt_shape or len(kpt_shape) != 2 or kpt_shape[1] not in (2, 3) or kpt_shape[0] < 1:
        raise DatasetError(
            f"pose export: kpt_shape {kpt_shape!r} unknown (no keypoints in the answers): "
            "pass kpt_shape=[keypoints, 3] and kpt_names (the model's model.kpt_names)"
        )
    fallback = next(iter(layout.values()), [str(i) for i in range(kpt_shape[0])])
    layout = {c: layout.get(c, fallback) for c in names}
    wrong = {c: n for c, n in layout.items() if len(n) != kpt_shape[0] or len(set(n)) != len(n)}
    if wrong:
        raise DatasetError(
            f"pose export: keypoint names {wrong} are not {kpt_shape[0]} distinct names: pass kpt_names "
            "(the model's model.kpt_names) matching kpt_shape"
        )
    return [int(kpt_shape[0]), int(kpt_shape[1])], layout


# ------------------------------------------------------------------------------------------------- YOLO labels


def _yolo_lines(answer: dict, task: str, width: int, height: int, kpt: tuple | None) -> list[str]:
    """The answer's detections as YOLO label lines for ``task`` (normalised, clipped to the image)."""
    lines = []
    for d in answer_items(answer):
        cls = int(d["class_id"])
        if task == "segment":
            values = [_unit(c / s) for x, y in _polygon(d) for c, s in ((x, width), (y, height))]
        elif task == "obb":
            values = [_unit(c / s) for x, y in _corners(d) for c, s in ((x, width), (y, height))]
        else:
            x1, y1, x2, y2 = (_unit(v / s) for v, s in zip(d["bbox"], (width, height, width, height), strict=True))
            values = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        if task == "pose":
            (_, ndim), layout = kpt
            found = {str(k["name"]): k for k in d.get("keypoints") or []}
            for name in layout[cls]:
                k = found.get(name)
                if ndim == 2:
                    values += [_unit(k["x"] / width), _unit(k["y"] / height)] if k else [0.0, 0.0]
                elif k and k["confidence"] >= KEYPOINT_VISIBLE and 0 <= k["x"] <= width and 0 <= k["y"] <= height:
                    values += [k["x"] / width, k["y"] / height, 2]
                else:
                    values += [0.0, 0.0, 0]
        lines.append(_line(cls, values))
    return lines


def _check_values(where: str, fields: list[str], task: str, names: dict[int, str], kpt_shape: list[int] | None) -> str:
    """One YOLO label line checked for ``task`` and rewritten clipped; DatasetError naming ``where`` if wrong."""
    count = len(fields) - 1
    expected = {"detect": "5", "obb": "9", "segment": "1 + an even number of at least 6"}
    if task == "pose":
        expected["pose"] = str(5 + kpt_shape[0] * kpt_shape[1])
    ok = (count == 4 and task == "detect") or (count == 8 and task == "obb")
    ok = ok or (task == "segment" and count >= 6 and count % 2 == 0)
    ok = ok or (task == "pose" and count == 4 + kpt_shape[0] * kpt_shape[1])
    if not ok:
        raise DatasetError(f"{where}: {len(fields)} values where a {task} label has {expected[task]}: fix the line")
    try:
        cls, values = int(fields[0]), [float(v) for v in fields[1:]]
    except ValueError as error:
        raise DatasetError(f"{where}: {' '.join(fields)!r} is not a class id and numbers: fix the line") from error
    if cls not in names:
        raise DatasetError(
            f"{where}: class id {cls} is not one of this model's classes "
            f"({', '.join(f'{i} {n}' for i, n in names.items())}): fix the class id"
        )
    coordinates = (
        values if task != "pose" else values[:4] + [v for i, v in enumerate(values[4:]) if i % kpt_shape[1] < 2]
    )
    bad = [v for v in coordinates if not (-TOLERANCE <= v <= 1 + TOLERANCE) or math.isnan(v)]
    if bad:
        raise DatasetError(f"{where}: coordinate {bad[0]} is outside [0, 1]: coordinates are fractions of the image")
    if task in ("detect", "pose") and (values[2] <= 0 or values[3] <= 0):
        raise DatasetError(f"{where}: a box of width {values[2]} and height {values[3]}: fix the box size")
    if task == "pose" and kpt_shape[1] == 3:
        visibility = values[4 + 2 :: 3]
        if any(v not in (0, 1, 2) for v in visibility):
            raise DatasetError(f"{where}: keypoint visibility {visibility} is not 0, 1 or 2: fix the line")
        return _line(cls, [v if i >= 4 and (i - 4) % 3 == 2 else _unit(v) for i, v in enumerate(values)])
    return _line(cls, [_unit(v) for v in values])


# ------------------------------------------------------------------------------------------------ YOLO export


def _classify_files(dataset: Path, capture: str) -> list[Path]:
    return [p for split in ("train", "val") for p in (dataset / split).glob(f"*/{capture}.*") if p.is_file()]


def export_yolo(
    rows: Iterable[dict],
    read_blob: ReadBlob,
    out: Path,
    names: dict[int, str],
    task: str,
    kpt_shape: list[int] | None = None,
    kpt_names: dict[int, list[str]] | list[str] | None = None,
    flip_idx: list[int] | None = None,
) -> ExportSummary:
    """Write the captures as a dataset Ultralytics trains on unchanged, the answers as pre-labels.

    detect/segment/pose/obb: ``out/images``, ``out/labels``, ``out/data.yaml`` (its path, in the summary);
    classify: ``out/train/<class>/`` and ``out/val/<class>/`` by the top-1 class (the folder, in the summary).
    ``out/captures.jsonl`` keeps the rows (merged with an earlier export's). Rows whose answer is not a
    success are skipped and counted. Exporting again into the same folder rewrites the pre-labels of the
    images no person has labelled (labelled.json) and leaves the others' labels alone.

    Pose: keypoints are written in the order of ``kpt_names`` ({class: [names]} or one list for every
    class; default: the order in the answers) and data.yaml carries kpt_shape and kpt_names (Ultralytics
    gives the trained model these names, which the API answers with). ``flip_idx`` is written only when
    given: without it Ultralytics turns off left-right flips, which is right, since an identity flip_idx
    would teach a left keypoint on the right.
    """
    _check_task(task)
    names = _names(names)
    out = Path(out).resolve()
    good, skipped = _successful(rows, task)
    labelled = labelled_ids(out)
    if task == "classify":
        return _export_classify(good, skipped, read_blob, out, names, labelled)
    data_file = out / DATA_FILE
    existing = _load_yaml(data_file) if data_file.is_file() else {}
    if existing and _names(existing.get("names", {})) != names:
        raise DatasetError(
            f"{data_file}: exported with classes {existing.get('names')}, not {names}: "
            "export a model with other classes into a new folder"
        )
    kpt = _keypoint_layout(good, names, kpt_shape, kpt_names, existing) if task == "pose" else None
    if flip_idx is not None and (task != "pose" or sorted(flip_idx) != list(range(kpt[0][0]))):
        raise DatasetError(f"flip_idx {flip_idx} is not a permutation of the keypoints: pass the model's flip_idx")
    planned = []
    for row in good:
        capture, width_height = _capture_id(row), _size(row)
        planned.append((row, capture, _suffix(row), _yolo_lines(row["answer"], task, *width_height, kpt)))
    kept = 0
    for row, capture, ext, lines in planned:
        for stale in (out / "images").glob(f"{capture}.*"):
            if stale.suffix != ext:
                stale.unlink()
        image = out / "images" / f"{capture}{ext}"
        if not image.is_file():
            _write(image, _blob(row, read_blob))
        if capture in labelled:
            kept += 1
        else:
            _write(out / "labels" / f"{capture}.txt", "".join(f"{line}\n" for line in lines))
    data = {"path": str(out), "train": "images", "val": "images", "names": names}
    if kpt:
        data |= {"kpt_shape": kpt[0], "kpt_names": kpt[1]}
        if flip_idx is not None or existing.get("flip_idx"):
            data["flip_idx"] = list(flip_idx if flip_idx is not None else existing["flip_idx"])
    _write(data_file, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    _write_captures(out / CAPTURES_FILE, _read_captures(out / CAPTURES_FILE) | {r["id"]: r for r, *_ in planned})
    _drop_caches(out)
    return ExportSummary(data_file, len(planned), skipped, kept)


def _export_classify(
    good: list[dict], skipped: int, read_blob: ReadBlob, out: Path, names: dict[int, str], labelled: dict
) -> ExportSummary:
    """Classify: every class gets a folder in train/ and val/ (Ultralytics numbers classes by sorted folder
    name, so a class without images must still have one), each image in its top-1 class's folders."""
    if list(names.values()) != sorted(names.values()):
        raise DatasetError(
            f"classify export to {out}: Ultralytics numbers a folder dataset's classes in sorted name order, "
            f"and {list(names.values())} is not sorted, so a retrained model would answer other class ids: "
            "rename the classes so their order sorts, or train from a dataset YAML of your own"
        )
    bad = [n for n in names.values() if not ID_RE.match(n.replace(" ", "_"))]
    if bad:
        raise DatasetError(f"classify export to {out}: class names {bad} cannot be folder names: rename the classes")
    if (out / "train").is_dir():
        extra = sorted({p.name for p in (out / "train").iterdir() if p.is_dir()} - set(names.values()))
        if extra:
            raise DatasetError(
                f"{out / 'train'}: class folders {extra} are not classes of {names}: export into a new folder"
            )
    planned = []
    for row in good:
        classes = answer_items(row["answer"])
        if not classes or classes[0].get("class") not in names.values():
            raise DatasetError(
                f"capture {row.get('id')}: top-1 class {classes[:1]} is not one of {list(names.values())}: "
                "export with the names of the model that answered"
            )
        planned.append((row, _capture_id(row), _suffix(row), classes[0]["class"]))
    for split in ("train", "val"):
        for name in names.values():
            (out / split / name).mkdir(parents=True, exist_ok=True)
    kept = 0
    for row, capture, ext, name in planned:
        existing = _classify_files(out, capture)
        if capture in labelled and existing:
            kept += 1
            continue
        targets = [out / split / name / f"{capture}{ext}" for split in ("train", "val")]
        for stale in existing:
            if stale not in targets:
                stale.unlink()
        written = next((target for target in targets if target.is_file()), None)
        for target in targets:  # val/ holds a hard link to train/'s copy
            if written is None:
                _write(target, _blob(row, read_blob))
                written = target
            elif not target.is_file():
                link(written, target)
    _write_captures(out / CAPTURES_FILE, _read_captures(out / CAPTURES_FILE) | {r["id"]: r for r, *_ in planned})
    _drop_caches(out)
    return ExportSummary(out, len(planned), skipped, kept)


# ------------------------------------------------------------------------------------------ Label Studio export


def _percent(value: float, size: int) -> float:
    return value / size * 100


def _ls_rectangle(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> dict:
    return {
        "x": _percent(x1, width),
        "y": _percent(y1, height),
        "width": _percent(x2 - x1, width),
        "height": _percent(y2 - y1, height),
        "rotation": 0,
    }


def _ls_rotated(o: dict, width: int, height: int) -> dict:
    """An obb (centre, size, angle in radians) as Label Studio's rectangle, which rotates about its top-left
    corner (x, y) by ``rotation`` degrees clockwise on screen (the same sense as Ultralytics' angle)."""
    cos, sin = math.cos(o["angle"]), math.sin(o["angle"])
    x = o["cx"] - (o["w"] / 2 * cos - o["h"] / 2 * sin)
    y = o["cy"] - (o["w"] / 2 * sin + o["h"] / 2 * cos)
    return {
        "x": _percent(x, width),
        "y": _percent(y, height),
        "width": _percent(o["w"], width),
        "height": _percent(o["h"], height),
        "rotation": math.degrees(o["angle"]) % 360,
    }


def _ls_results(row: dict, task: str) -> list[dict]:
    answer, capture = row["answer"], row["id"]
    width, height = _size(row)

    def result(number: int | str, kind: str, value: dict, score: float, from_name: str = "label") -> dict:
        return {
            "id": f"{capture}_{number}",
            "type": kind,
            "from_name": from_name,
            "to_name": "image",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": value,
            "score": score,
        }

    if task == "classify":
        top = answer_items(answer)[0]
        return [result(0, "choices", {"choices": [top["class"]]}, top["confidence"])]
    results = []
    for i, d in enumerate(answer_items(answer)):
        label, score = d["class"], d["confidence"]
        if task == "segment":
            points = [[_percent(x, width), _percent(y, height)] for x, y in _polygon(d)]
            results.append(
                result(i, "polygonlabels", {"points": points, "closed": True, "polygonlabels": [label]}, score)
            )
            continue
        box = _ls_rotated(d["obb"], width, height) if task == "obb" else _ls_rectangle(*d["bbox"], width, height)
        results.append(result(i, "rectanglelabels", box | {"rectanglelabels": [label]}, score))
        for j, k in enumerate(d.get("keypoints") or [] if task == "pose" else []):
            if k["confidence"] >= KEYPOINT_VISIBLE and 0 <= k["x"] <= width and 0 <= k["y"] <= height:
                value = {
                    "x": _percent(k["x"], width),
                    "y": _percent(k["y"], height),
                    "width": LS_KEYPOINT_WIDTH,
                    "keypointlabels": [str(k["name"])],
                }
                results.append(result(f"{i}_k{j}", "keypointlabels", value, k["confidence"], "keypoint"))
    return results


def labeling_config(task: str, names: dict[int, str], keypoint_names: Iterable[str] = ()) -> str:
    """Label Studio's labeling config for ``task``: the controls (from_name ``label``, and ``keypoint`` for
    pose) on the image (to_name ``image``) that the tasks' predictions and import_labels use."""
    _check_task(task)
    labels = "".join(f"\n    <Label value={quoteattr(n)}/>" for n in _names(names).values())
    if task == "classify":
        choices = "".join(f"\n    <Choice value={quoteattr(n)}/>" for n in _names(names).values())
        control = f'  <Choices name="label" toName="image" choice="single" showInLine="true">{choices}\n  </Choices>'
    elif task == "segment":
        control = f'  <PolygonLabels name="label" toName="image" strokeWidth="2">{labels}\n  </PolygonLabels>'
    else:
        rotate = "true" if task == "obb" else "false"
        control = f'  <RectangleLabels name="label" toName="image" canRotate="{rotate}">{labels}\n  </RectangleLabels>'
    if task == "pose":
        points = "".join(f"\n    <Label value={quoteattr(n)}/>" for n in dict.fromkeys(keypoint_names))
        control += f'\n  <KeyPointLabels name="keypoint" toName="image" strokeWidth="2">{points}\n  </KeyPointLabels>'
    return f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n{control}\n</View>\n'


def export_labelstudio(
    rows: Iterable[dict],
    read_blob: ReadBlob,
    out: Path,
    task: str,
    image_prefix: str = "/data/local-files/?d=",
    names: dict[int, str] | None = None,
    kpt_names: dict[int, list[str]] | list[str] | None = None,
) -> ExportSummary:
    """Write a Label Studio project's files: ``out/images/<id>.<ext>``, ``out/tasks.json`` (one task per
    capture, the answer as a prediction to correct) and ``out/labeling_config.xml``.

    ``data.image`` is ``image_prefix`` + ``images/<id>.<ext>`` (the default serves ``out`` as Label Studio's
    local-files document root); ``data.capture_id`` leads a Label Studio export back to the capture. Pass the
    model's ``names`` (and ``kpt_names`` for pose) so the config offers every class, not only those the
    captures show. Pose keypoints below KEYPOINT_VISIBLE confidence are left out, as in export_yolo.
    """
    _check_task(task)
    out = Path(out).resolve()
    good, skipped = _successful(rows, task)
    seen: dict[int, str] = {}
    keypoints: list[str] = []
    for row in good:
        answer = row["answer"]
        for item in answer_items(answer):
            seen.setdefault(int(item["class_id"]), item["class"])
            keypoints += [str(k["name"]) for k in item.get("keypoints") or []]
    names = _names(names) if names is not None else dict(sorted(seen.items()))
    unknown = {i: n for i, n in seen.items() if names.get(i) != n}
    if unknown:
        raise DatasetError(
            f"Label Studio export to {out}: answers name classes {unknown} not in {names}: pass the model's names"
        )
    if not names:
        raise DatasetError(f"Label Studio export to {out}: no class seen in the answers: pass the model's names")
    if isinstance(kpt_names, dict):
        keypoints = [str(n) for v in kpt_names.values() for n in v] + keypoints
    elif kpt_names:
        keypoints = [str(n) for n in kpt_names] + keypoints
    tasks = []
    for row in good:
        capture, ext = _capture_id(row), _suffix(row)
        image = out / "images" / f"{capture}{ext}"
        if not image.is_file():
            _write(image, _blob(row, read_blob))
        results = _ls_results(row, task)
        scores = [r["score"] for r in results if r["type"] != "keypointlabels"]
        tasks.append(
            {
                "data": {
                    "image": f"{image_prefix}images/{capture}{ext}",
                    "capture_id": capture,
                    "reasons": ",".join(row.get("reasons") or []),
                },
                "predictions": [
                    {
                        "model_version": str(row.get("version") or row["answer"].get("model", {}).get("version", "")),
                        "score": sum(scores) / len(scores) if scores else 0.0,
                        "result": results,
                    }
                ],
            }
        )
    _write(out / "labeling_config.xml", labeling_config(task, names, keypoints))
    _write(out / "tasks.json", json.dumps(tasks, indent=1))
    return ExportSummary(out / "tasks.json", len(tasks), skipped)


# ------------------------------------------------------------------------------------------------ label import


def _dataset_images(dataset: Path, task: str) -> dict[str, list[Path]]:
    """The dataset's images by id (classify: the image in train/ and in val/)."""
    found: dict[str, list[Path]] = {}
    if task == "classify":
        files = [p for split in ("train", "val") for p in sorted((dataset / split).glob("*/*"))]
    else:
        files = sorted((dataset / "images").glob("*"))
    for path in files:
        if is_image_file(path):
            found.setdefault(path.stem, []).append(path)
    if not found:
        layout = "train/<class>/" if task == "classify" else "images/"
        raise DatasetError(f"{dataset}: no images under {layout}: import into a dataset that export_yolo wrote")
    return found


def _read_yolo_folder(
    source: Path, images: dict, task: str, names: dict[int, str], kpt_shape: list[int] | None
) -> tuple[dict[str, list[str] | str], list[str]]:
    labels: dict[str, list[str] | str] = {}
    unknown = []
    for path in sorted(source.glob("*.txt")):
        if path.stem not in images:
            unknown.append(path.name)
            continue
        lines = [(n, t.split()) for n, t in enumerate(path.read_text().splitlines(), 1) if t.strip()]
        if task == "classify":
            if len(lines) != 1 or len(lines[0][1]) != 1:
                raise DatasetError(f"{path}: a classify label is one line holding one class id: fix the file")
            number, (value,) = lines[0]
            if value not in {str(i) for i in names}:
                raise DatasetError(f"{path}:{number}: class id {value!r} is not one of {names}: fix the class id")
            labels[path.stem] = names[int(value)]
        else:
            labels[path.stem] = [_check_values(f"{path}:{n}", f, task, names, kpt_shape) for n, f in lines]
    return labels, unknown


def _annotation(task_item: dict) -> dict | None:
    """The task's latest annotation that was not cancelled, or None."""
    done = [a for a in task_item.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    done.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    return done[-1] if done else None


def _task_capture(task_item: dict, images: dict) -> str:
    """Which capture a Label Studio task is: data.capture_id, else the image's file name (Label Studio's
    uploads prefix it with ``<hash>-``)."""
    data = task_item.get("data") or {}
    if data.get("capture_id"):
        return str(data["capture_id"])
    stem = Path(re.split(r"[/=]", str(data.get("image", "")))[-1]).stem
    if stem not in images and "-" in stem and stem.split("-", 1)[1] in images:
        return stem.split("-", 1)[1]
    return stem


def _keypoint_owner(
    point: tuple[float, float], parent: str | None, box_ids: list, envelopes: list[tuple[float, float, float, float]]
) -> int | None:
    """Which box a Label Studio keypoint belongs to: its parentID's, else the smallest box holding it, else
    the box with the nearest centre (None without boxes)."""
    if not envelopes:
        return None
    if parent and parent in box_ids:
        return box_ids.index(parent)
    x, y = point
    inside = [i for i, (x1, y1, x2, y2) in enumerate(envelopes) if x1 <= x <= x2 and y1 <= y <= y2]
    if inside:
        return min(inside, key=lambda i: (envelopes[i][2] - envelopes[i][0]) * (envelopes[i][3] - envelopes[i][1]))
    return min(
        range(len(envelopes)),
        key=lambda i: (
            ((envelopes[i][0] + envelopes[i][2]) / 2 - x) ** 2 + ((envelopes[i][1] + envelopes[i][3]) / 2 - y) ** 2
        ),
    )


def _ls_labels(
    where: str, result: list, task: str, names: dict[int, str], kpt: tuple | None, image: Path
) -> list[str] | str:
    """One annotation's result as YOLO label lines (classify: the class name)."""
    ids = {n: i for i, n in names.items()}
    boxes, polygons, points, choices = [], [], [], []
    size = None
    for j, item in enumerate(result):
        here = f"{where} result {j}"
        kind = item.get("type") if isinstance(item, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        if kind == "relation":
            continue
        allowed = {"classify": {"choices"}, "segment": {"polygonlabels", "rectanglelabels"}}.get(
            task, {"rectanglelabels"}
        )
        allowed = allowed | ({"keypointlabels"} if task == "pose" else set())
        if kind not in allowed or not isinstance(value, dict):
            raise DatasetError(
                f"{here}: a {kind!r} region where a {task} label is {' or '.join(sorted(allowed))}: "
                "label with the labeling_config.xml that export_labelstudio wrote"
            )
        label = (value.get(kind) or [None])[0]
        known = set(names.values()) if kind != "keypointlabels" else {n for v in kpt[1].values() for n in v}
        if label not in known:
            raise DatasetError(f"{here}: label {label!r} is not one of {sorted(known)}: fix the label in Label Studio")
        if kind == "choices":
            choices.append(label)
            continue
        try:
            if kind == "polygonlabels":
                xy = [(float(x) / 100, float(y) / 100) for x, y in value["points"]]
            elif kind == "keypointlabels":
                xy = [(float(value["x"]) / 100, float(value["y"]) / 100)]
            else:
                x, y, w, h = (float(value[k]) / 100 for k in ("x", "y", "width", "height"))
                rotation = float(value.get("rotation") or 0)
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(
                f"{here}: {kind} value {value} lacks numbers ({error}): fix it in Label Studio"
            ) from error
        if kind == "rectanglelabels":
            if w <= 0 or h <= 0:
                raise DatasetError(f"{here}: a box of width {w} and height {h}: fix it in Label Studio")
            if rotation % 360:
                if size is None:
                    size = (item.get("original_width"), item.get("original_height"))
                    if not all(isinstance(v, int | float) and v > 0 for v in size):
                        with Image.open(image) as opened:
                            size = ImageOps.exif_transpose(opened).size
                aspect = size[1] / size[0]  # height / width: rotation happens in pixels, not in percent
                cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
                u, v = (w * cos, w * sin / aspect), (-h * sin * aspect, h * cos)
                xy = [(x, y), (x + u[0], y + u[1]), (x + u[0] + v[0], y + u[1] + v[1]), (x + v[0], y + v[1])]
            else:
                xy = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        bad = [c for p in xy for c in p if not -TOLERANCE <= c <= 1 + TOLERANCE]
        if bad:
            raise DatasetError(f"{here}: coordinate {bad[0] * 100:.2f}% is outside the image: fix it in Label Studio")
        xy = [(_unit(px), _unit(py)) for px, py in xy]
        if kind == "keypointlabels":
            points.append((label, xy[0], item.get("parentID")))
        elif kind == "polygonlabels" or task == "segment":
            if len(xy) < 3:
                raise DatasetError(f"{here}: a polygon of {len(xy)} points: draw at least 3")
            polygons.append((ids[label], xy))
        else:
            boxes.append((ids[label], xy, item.get("id")))
    if task == "classify":
        if len(choices) != 1:
            raise DatasetError(
                f"{where}: {len(choices)} classes chosen where a classify label has one: fix it in Label Studio"
            )
        return choices[0]
    if task == "segment":
        return [_line(c, [v for p in xy for v in p]) for c, xy in polygons]
    if task == "obb":
        return [_line(c, [v for p in xy for v in p]) for c, xy, _ in boxes]
    envelopes = [
        (min(x for x, _ in xy), min(y for _, y in xy), max(x for x, _ in xy), max(y for _, y in xy))
        for _, xy, _ in boxes
    ]
    members: dict[int, dict[str, tuple[float, float]]] = {i: {} for i in range(len(boxes))}
    for name, point, parent in points:
        owner = _keypoint_owner(point, parent, [rid for _, _, rid in boxes], envelopes)
        if owner is None:
            raise DatasetError(f"{where}: keypoint {name!r} without a box: draw the object's box too")
        if name in members[owner]:
            raise DatasetError(f"{where}: two {name!r} keypoints in one box: delete one in Label Studio")
        members[owner][name] = point
    lines = []
    (_, ndim), layout = kpt if kpt else ((0, 0), {})
    for i, (x1, y1, x2, y2) in enumerate(envelopes):
        values = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        if task == "pose":
            cls = boxes[i][0]
            strays = set(members[i]) - set(layout[cls])
            if strays:
                raise DatasetError(f"{where}: keypoints {sorted(strays)} are not keypoints of {names[cls]}: fix them")
            for name in layout[cls]:
                p = members[i].get(name)
                values += ([p[0], p[1], 2] if p else [0.0, 0.0, 0]) if ndim == 3 else list(p or (0.0, 0.0))
        lines.append(_line(boxes[i][0], values))
    return lines


def _read_labelstudio(
    source: Path, images: dict, task: str, names: dict[int, str], kpt: tuple | None
) -> tuple[dict[str, list[str] | str], list[str], list[str]]:
    fix = "export the Label Studio project as JSON (not JSON-MIN, CSV or YOLO) and import that file"
    try:
        tasks = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{source}: not JSON ({error}): {fix}") from error
    shaped = isinstance(tasks, list) and all(
        isinstance(t, dict) and isinstance(t.get("data"), dict) and isinstance(t.get("annotations"), list)
        for t in tasks
    )
    if not shaped:
        ours = isinstance(tasks, list) and tasks and isinstance(tasks[0], dict) and "predictions" in tasks[0]
        hint = " (this is a tasks file with predictions only, as export_labelstudio writes it)" if ours else ""
        raise DatasetError(
            f"{source}: not a Label Studio JSON export, a list of tasks with data and annotations{hint}: {fix}"
        )
    labels: dict[str, list[str] | str] = {}
    unknown, unannotated = [], []
    for number, item in enumerate(tasks):
        capture = _task_capture(item, images)
        if capture not in images:
            unknown.append(str(item["data"].get("capture_id") or item["data"].get("image")))
            continue
        annotation = _annotation(item)
        if annotation is None:
            unannotated.append(capture)
            continue
        if not isinstance(annotation.get("result"), list):
            raise DatasetError(
                f"{source}: task {number} (capture {capture}): an annotation without a result list: {fix}"
            )
        where = f"{source}: task {number} (capture {capture})"
        labels[capture] = _ls_labels(where, annotation["result"], task, names, kpt, images[capture][0])
    return labels, unknown, unannotated


def import_labels(dataset: Path, source: Path, names: dict[int, str], task: str, who: str = "import") -> ImportSummary:
    """Bring a person's labels into a dataset export_yolo wrote, and record them in ``labelled.json``.

    ``source`` is a folder of YOLO label files (``<id>.txt``; classify: one line with the class id) or a
    Label Studio JSON export (tasks with ``annotations``; matched by ``data.capture_id``, else the image's
    file name; the latest annotation not cancelled counts). Every label is checked first (class in
    ``names``, coordinates in [0, 1], the task's number of values): a bad one raises DatasetError naming
    the file and line (or task and result) and nothing is written. Classify moves the image to the
    labelled class's folders. An image labelled with no objects gets an empty label file (a background).
    """
    _check_task(task)
    names = _names(names)
    dataset, source = Path(dataset).resolve(), Path(source)
    kpt = None
    if task != "classify":
        data = _load_yaml(dataset / DATA_FILE)
        if _names(data.get("names", {})) != names:
            raise DatasetError(
                f"{dataset / DATA_FILE}: the dataset's classes {data.get('names')} are not {names}: "
                "import with the names the dataset was exported with"
            )
        if task == "pose":
            shape = data.get("kpt_shape")
            if not shape:
                raise DatasetError(
                    f"{dataset / DATA_FILE}: no kpt_shape: export the pose dataset again with export_yolo"
                )
            layout = data.get("kpt_names") or dict.fromkeys(names, [str(i) for i in range(shape[0])])
            kpt = (list(shape), {int(k): [str(n) for n in v] for k, v in layout.items()})
    images = _dataset_images(dataset, task)
    unannotated: list[str] = []
    if source.is_dir():
        labels, unknown = _read_yolo_folder(source, images, task, names, kpt[0] if kpt else None)
    elif source.is_file():
        labels, unknown, unannotated = _read_labelstudio(source, images, task, names, kpt)
    else:
        raise DatasetError(
            f"{source}: no such folder or file: pass a folder of YOLO labels or a Label Studio JSON export"
        )
    for capture, label in labels.items():
        if task == "classify":
            for path in images[capture]:
                target = path.parent.parent / label / path.name
                if target != path:
                    target.parent.mkdir(exist_ok=True)
                    os.replace(path, target)
        else:
            _write(dataset / "labels" / f"{capture}.txt", "".join(f"{line}\n" for line in label))
    when = datetime.now(UTC).isoformat(timespec="seconds")
    record = labelled_ids(dataset) | {c: {"when": when, "who": who, "source": str(source)} for c in labels}
    if labels:
        _write(dataset / LABELLED_FILE, json.dumps(record, indent=1, sort_keys=True))
        _drop_caches(dataset)
    return ImportSummary(len(labels), sorted(labels), unknown, unannotated)


# ------------------------------------------------------------------------------------------------------ subsets


def link(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target`` (folders made), copying across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def subset(dataset: Path, ids: Iterable[str], out: Path) -> Path:
    """A new dataset in ``out`` (which must not exist or be empty) holding only ``ids`` of ``dataset``:
    the same layout, files hard-linked (copied across file systems), data.yaml's path set to ``out``,
    captures.jsonl and labelled.json cut to the ids. Returns data.yaml's path (classify: ``out``)."""
    dataset, out = Path(dataset).resolve(), Path(out).resolve()
    ids = list(dict.fromkeys(str(i) for i in ids))
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: not empty: build a subset into a new folder, or remove this one first")
    classify = not (dataset / DATA_FILE).is_file()
    if classify and not (dataset / "train").is_dir():
        raise DatasetError(f"{dataset}: neither data.yaml nor train/: pass a dataset export_yolo wrote")
    images = _dataset_images(dataset, "classify" if classify else "detect")
    missing = [i for i in ids if i not in images]
    if missing:
        raise DatasetError(
            f"{dataset}: no images for ids {missing}: pass ids of this dataset (labelled_ids, captures.jsonl)"
        )
    if classify:
        for split in ("train", "val"):
            for folder in (dataset / split).iterdir() if (dataset / split).is_dir() else ():
                if folder.is_dir():
                    (out / split / folder.name).mkdir(parents=True, exist_ok=True)
    for capture in ids:
        for path in images[capture]:
            link(path, out / path.relative_to(dataset))
        label = dataset / "labels" / f"{capture}.txt"
        if not classify and label.is_file():
            link(label, out / "labels" / label.name)
    if not classify:
        (out / "images").mkdir(parents=True, exist_ok=True)
        data = _load_yaml(dataset / DATA_FILE) | {"path": str(out)}
        _write(out / DATA_FILE, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    wanted = set(ids)
    _write_captures(
        out / CAPTURES_FILE, {k: v for k, v in _read_captures(dataset / CAPTURES_FILE).items() if k in wanted}
    )
    labelled = {k: v for k, v in labelled_ids(dataset).items() if k in wanted}
    if labelled:
        _write(out / LABELLED_FILE, json.dumps(labelled, indent=1, sort_keys=True))
    return out if classify else out / DATA_FILE
