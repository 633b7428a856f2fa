"""Label Studio: a project's files from the captures (each answer a prediction to correct, a labeling config
for the task), and a Label Studio JSON export read back as YOLO label lines."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageOps

from quality.geometry import clip_unit
from quality.tasks import TOLERANCE
from retraining.datasets.labelstudio_tasks import LABEL_STUDIO, Annotated
from retraining.datasets.layout import (
    DatasetError,
    ExportSummary,
    ReadBlob,
    answer_size,
    capture_bytes,
    capture_id,
    check_task,
    class_names,
    image_suffix,
    successful_rows,
    write_whole,
)
from serving.yolo_contract import answer_items


def _ls_results(row: dict, task: str) -> list[dict]:
    capture = row["id"]
    width, height = answer_size(row)
    return [
        {
            "id": f"{capture}_{r.number}",
            "type": r.type,
            "from_name": r.from_name,
            "to_name": "image",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": r.value,
            "score": r.score,
        }
        for r in LABEL_STUDIO[task].regions(row["answer"], width, height)
    ]


def labeling_config(task: str, names: dict[int, str], keypoint_names: Iterable[str] = ()) -> str:
    """Label Studio's labeling config for ``task``: the controls (from_name ``label``, and ``keypoint`` for
    pose) on the image (to_name ``image``) that the tasks' predictions and import_labels use."""
    check_task(task)
    control = LABEL_STUDIO[task].control(names, keypoint_names)
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
    check_task(task)
    out = Path(out).resolve()
    good, skipped = successful_rows(rows, task)
    seen: dict[int, str] = {}
    keypoints: list[str] = []
    for row in good:
        answer = row["answer"]
        for item in answer_items(answer):
            seen.setdefault(int(item["class_id"]), item["class"])
            keypoints += [str(k["name"]) for k in item.get("keypoints") or []]
    names = class_names(names) if names is not None else dict(sorted(seen.items()))
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
        capture, ext = capture_id(row), image_suffix(row)
        image = out / "images" / f"{capture}{ext}"
        if not image.is_file():
            write_whole(image, capture_bytes(row, read_blob))
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
    write_whole(out / "labeling_config.xml", labeling_config(task, names, keypoints))
    write_whole(out / "tasks.json", json.dumps(tasks, indent=1))
    return ExportSummary(out / "tasks.json", len(tasks), skipped)


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


def _ls_labels(
    where: str, result: list, task: str, names: dict[int, str], kpt: tuple | None, image: Path
) -> list[str] | str:
    """One annotation's result as YOLO label lines (classify: the class name)."""
    studio = LABEL_STUDIO[task]
    ids = {n: i for i, n in names.items()}
    annotated = Annotated()
    size = None
    for j, item in enumerate(result):
        here = f"{where} result {j}"
        kind = item.get("type") if isinstance(item, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        if kind == "relation":
            continue
        if kind not in studio.reads or not isinstance(value, dict):
            raise DatasetError(
                f"{here}: a {kind!r} region where a {task} label is {' or '.join(sorted(studio.reads))}: "
                "label with the labeling_config.xml that export_labelstudio wrote"
            )
        label = (value.get(kind) or [None])[0]
        known = set(names.values()) if kind != "keypointlabels" else {n for v in kpt[1].values() for n in v}
        if label not in known:
            raise DatasetError(f"{here}: label {label!r} is not one of {sorted(known)}: fix the label in Label Studio")
        if kind == "choices":
            annotated.choices.append(label)
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
        xy = [(clip_unit(px), clip_unit(py)) for px, py in xy]
        if kind == "keypointlabels":
            annotated.points.append((label, xy[0], item.get("parentID")))
        elif len(xy) < 3:
            raise DatasetError(f"{here}: a polygon of {len(xy)} points: draw at least 3")
        else:
            annotated.shapes.append((ids[label], xy, item.get("id")))
    return studio.lines(where, annotated, names, kpt)


def read_labelstudio(
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
