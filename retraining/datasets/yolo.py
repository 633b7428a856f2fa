"""YOLO export: captures as a dataset Ultralytics trains on unchanged, the model's answers as pre-labels
(images/ + labels/ + data.yaml, or one folder per class in train/ and val/ for a classifier)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from quality.tasks import task_of
from retraining.datasets.layout import (
    CAPTURES_FILE,
    DATA_FILE,
    ID_RE,
    DatasetError,
    ExportSummary,
    ReadBlob,
    answer_size,
    capture_bytes,
    capture_id,
    check_task,
    class_names,
    drop_caches,
    image_suffix,
    label_line,
    labelled_ids,
    link,
    read_captures,
    read_dataset_yaml,
    successful_rows,
    write_captures,
    write_whole,
)
from serving.yolo_contract import answer_items


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


def _yolo_lines(answer: dict, task: str, width: int, height: int, kpt: tuple | None) -> list[str]:
    """The answer's detections as YOLO label lines for ``task`` (normalised, clipped to the image)."""
    labels = task_of(task)
    return [label_line(int(d["class_id"]), labels.label_values(d, width, height, kpt)) for d in answer_items(answer)]


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
    check_task(task)
    names = class_names(names)
    out = Path(out).resolve()
    good, skipped = successful_rows(rows, task)
    labelled = labelled_ids(out)
    labels = task_of(task)
    if labels.classifies:
        return _export_classify(good, skipped, read_blob, out, names, labelled)
    data_file = out / DATA_FILE
    existing = read_dataset_yaml(data_file) if data_file.is_file() else {}
    if existing and class_names(existing.get("names", {})) != names:
        raise DatasetError(
            f"{data_file}: exported with classes {existing.get('names')}, not {names}: "
            "export a model with other classes into a new folder"
        )
    kpt = _keypoint_layout(good, names, kpt_shape, kpt_names, existing) if labels.keypoints else None
    if flip_idx is not None and (not labels.keypoints or sorted(flip_idx) != list(range(kpt[0][0]))):
        raise DatasetError(f"flip_idx {flip_idx} is not a permutation of the keypoints: pass the model's flip_idx")
    planned = []
    for row in good:
        capture, width_height = capture_id(row), answer_size(row)
        planned.append((row, capture, image_suffix(row), _yolo_lines(row["answer"], task, *width_height, kpt)))
    kept = 0
    for row, capture, ext, lines in planned:
        for stale in (out / "images").glob(f"{capture}.*"):
            if stale.suffix != ext:
                stale.unlink()
        image = out / "images" / f"{capture}{ext}"
        if not image.is_file():
            write_whole(image, capture_bytes(row, read_blob))
        if capture in labelled:
            kept += 1
        else:
            write_whole(out / "labels" / f"{capture}.txt", "".join(f"{line}\n" for line in lines))
    data = {"path": str(out), "train": "images", "val": "images", "names": names}
    if kpt:
        data |= {"kpt_shape": kpt[0], "kpt_names": kpt[1]}
        if flip_idx is not None or existing.get("flip_idx"):
            data["flip_idx"] = list(flip_idx if flip_idx is not None else existing["flip_idx"])
    write_whole(data_file, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    write_captures(out / CAPTURES_FILE, read_captures(out / CAPTURES_FILE) | {r["id"]: r for r, *_ in planned})
    drop_caches(out)
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
        planned.append((row, capture_id(row), image_suffix(row), classes[0]["class"]))
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
                write_whole(target, capture_bytes(row, read_blob))
                written = target
            elif not target.is_file():
                link(written, target)
    write_captures(out / CAPTURES_FILE, read_captures(out / CAPTURES_FILE) | {r["id"]: r for r, *_ in planned})
    drop_caches(out)
    return ExportSummary(out, len(planned), skipped, kept)
