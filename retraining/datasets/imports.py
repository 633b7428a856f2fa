"""A person's labels back into a dataset the YOLO export wrote: from a folder of YOLO label files or a Label
Studio JSON export, every label checked before any is written, and recorded in labelled.json."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from quality.tasks import task_of
from retraining.datasets.labelstudio import read_labelstudio
from retraining.datasets.layout import (
    DATA_FILE,
    LABELLED_FILE,
    DatasetError,
    ImportSummary,
    check_task,
    class_names,
    dataset_images,
    drop_caches,
    label_line,
    labelled_ids,
    read_dataset_yaml,
    write_whole,
)


def _check_values(where: str, fields: list[str], task: str, names: dict[int, str], kpt_shape: list[int] | None) -> str:
    """One YOLO label line checked for ``task`` and rewritten clipped; DatasetError naming ``where`` if wrong."""
    labels = task_of(task)
    if not labels.import_fits(len(fields) - 1, kpt_shape):
        raise DatasetError(
            f"{where}: {len(fields)} values where a {task} label has {labels.import_length(kpt_shape)}: fix the line"
        )
    try:
        cls, values = int(fields[0]), [float(v) for v in fields[1:]]
    except ValueError as error:
        raise DatasetError(f"{where}: {' '.join(fields)!r} is not a class id and numbers: fix the line") from error
    if cls not in names:
        raise DatasetError(
            f"{where}: class id {cls} is not one of this model's classes "
            f"({', '.join(f'{i} {n}' for i, n in names.items())}): fix the class id"
        )
    try:
        values = labels.import_values(values, kpt_shape)
    except ValueError as error:
        raise DatasetError(f"{where}: {error}") from error
    return label_line(cls, values)


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
        if task_of(task).classifies:
            if len(lines) != 1 or len(lines[0][1]) != 1:
                raise DatasetError(f"{path}: a classify label is one line holding one class id: fix the file")
            number, (value,) = lines[0]
            if value not in {str(i) for i in names}:
                raise DatasetError(f"{path}:{number}: class id {value!r} is not one of {names}: fix the class id")
            labels[path.stem] = names[int(value)]
        else:
            labels[path.stem] = [_check_values(f"{path}:{n}", f, task, names, kpt_shape) for n, f in lines]
    return labels, unknown


def import_labels(dataset: Path, source: Path, names: dict[int, str], task: str, who: str = "import") -> ImportSummary:
    """Bring a person's labels into a dataset export_yolo wrote, and record them in ``labelled.json``.

    ``source`` is a folder of YOLO label files (``<id>.txt``; classify: one line with the class id) or a
    Label Studio JSON export (tasks with ``annotations``; matched by ``data.capture_id``, else the image's
    file name; the latest annotation not cancelled counts). Every label is checked first (class in
    ``names``, coordinates in [0, 1], the task's number of values): a bad one raises DatasetError naming
    the file and line (or task and result) and nothing is written. Classify moves the image to the
    labelled class's folders. An image labelled with no objects gets an empty label file (a background).
    """
    check_task(task)
    task_labels = task_of(task)
    names = class_names(names)
    dataset, source = Path(dataset).resolve(), Path(source)
    kpt = None
    if not task_labels.classifies:
        data = read_dataset_yaml(dataset / DATA_FILE)
        if class_names(data.get("names", {})) != names:
            raise DatasetError(
                f"{dataset / DATA_FILE}: the dataset's classes {data.get('names')} are not {names}: "
                "import with the names the dataset was exported with"
            )
        if task_labels.keypoints:
            shape = data.get("kpt_shape")
            if not shape:
                raise DatasetError(
                    f"{dataset / DATA_FILE}: no kpt_shape: export the pose dataset again with export_yolo"
                )
            layout = data.get("kpt_names") or dict.fromkeys(names, [str(i) for i in range(shape[0])])
            kpt = (list(shape), {int(k): [str(n) for n in v] for k, v in layout.items()})
    images = dataset_images(dataset, task_labels.classifies)
    unannotated: list[str] = []
    if source.is_dir():
        labels, unknown = _read_yolo_folder(source, images, task, names, kpt[0] if kpt else None)
    elif source.is_file():
        labels, unknown, unannotated = read_labelstudio(source, images, task, names, kpt)
    else:
        raise DatasetError(
            f"{source}: no such folder or file: pass a folder of YOLO labels or a Label Studio JSON export"
        )
    for capture, label in labels.items():
        if task_labels.classifies:
            for path in images[capture]:
                target = path.parent.parent / label / path.name
                if target != path:
                    target.parent.mkdir(exist_ok=True)
                    os.replace(path, target)
        else:
            write_whole(dataset / "labels" / f"{capture}.txt", "".join(f"{line}\n" for line in label))
    when = datetime.now(UTC).isoformat(timespec="seconds")
    record = labelled_ids(dataset) | {c: {"when": when, "who": who, "source": str(source)} for c in labels}
    if labels:
        write_whole(dataset / LABELLED_FILE, json.dumps(record, indent=1, sort_keys=True))
        drop_caches(dataset)
    return ImportSummary(len(labels), sorted(labels), unknown, unannotated)
