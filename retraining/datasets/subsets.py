"""Subsets of a dataset: the same layout holding only some ids (for a training slice or a gate set)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import yaml

from retraining.datasets.layout import (
    CAPTURES_FILE,
    DATA_FILE,
    LABELLED_FILE,
    DatasetError,
    dataset_images,
    labelled_ids,
    link,
    read_captures,
    read_dataset_yaml,
    write_captures,
    write_whole,
)


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
    images = dataset_images(dataset, classify)
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
        data = read_dataset_yaml(dataset / DATA_FILE) | {"path": str(out)}
        write_whole(out / DATA_FILE, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    wanted = set(ids)
    write_captures(
        out / CAPTURES_FILE, {k: v for k, v in read_captures(dataset / CAPTURES_FILE).items() if k in wanted}
    )
    labelled = {k: v for k, v in labelled_ids(dataset).items() if k in wanted}
    if labelled:
        write_whole(out / LABELLED_FILE, json.dumps(labelled, indent=1, sort_keys=True))
    return out if classify else out / DATA_FILE
