"""The workspace of one retraining: the training, held-out and frozen sets it trains and is judged on, and its gate set.

From the labelled captures (a dataset ``retraining.datasets`` exported and a person labelled) a
retraining takes a held-out slice, chosen by a hash of each capture's id so a capture never moves
between slices from one retraining to the next; it trains on the rest mixed with a replay of the
incumbent's own training data (the ``--train-data`` its archive records), and is judged on the
held-out slice and on the incumbent's frozen gate set. The candidate's gate set is both, so the
archive carries what the next redeploy needs.

Layout of a workspace (``var/retrain/<model>/<version>/``), for every task but classify::

    captures/ replay/ holdout/ frozen/ gate/      images/ + labels/ each (gate/ adds data.yaml, gate.yaml)
    train.yaml holdout.yaml frozen.yaml           Ultralytics data files over them

and for classify the same folders hold ``<class>/`` folders, with ``train.yaml``'s role taken
by ``train-set/{train,val}/<class>/`` (Ultralytics' classify layout).
"""

from __future__ import annotations

import hashlib
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from quality.gate_sets import load_gate_set
from quality.tasks import METRICS, task_of
from retraining.datasets.layout import labelled_ids, link
from serving.yolo_files import MappingError, is_image_file, label_path, read_mapping

HOLDOUT_SHARE = 0.2


class WorkspaceError(Exception):
    """A retraining's inputs (labelled captures, replayed training data, a frozen gate set) that cannot be laid out
    into its workspace; the message names the file and the fix. (``DatasetError`` is the captures' datasets' own.)"""


def _read(path: Path) -> dict:
    """A data or gate yaml of the retraining's inputs; WorkspaceError naming it when it is not a readable mapping."""
    try:
        return read_mapping(path)
    except MappingError as exc:
        raise WorkspaceError(f"{exc}: export or package the data again") from None


@dataclass(frozen=True)
class Item:
    """One labelled image: its file, its YOLO label file (None for classify) and, for classify, its class."""

    image: Path
    label: Path | None
    cls: str | None = None


@dataclass
class Workspace:
    root: Path
    task: str
    names: dict[int, str]
    train: Path  # the data Ultralytics trains on (train.yaml, or the classify folder)
    holdout: Path  # data files scored on (their val split)
    frozen: Path | None
    gate: Path  # the candidate's gate set, for package_mar.sh --gate-data
    counts: dict[str, int]


def in_holdout(capture_id: str, share: float = HOLDOUT_SHARE) -> bool:
    """Stable across retrainings: the same capture is always held out, or never."""
    return int(hashlib.sha256(capture_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def split_labelled(dataset: Path, share: float = HOLDOUT_SHARE) -> tuple[list[str], list[str]]:
    """(training ids, held-out ids) of the dataset's person-labelled captures; at least one of each when >= 2."""
    ids = sorted(labelled_ids(dataset))
    if not ids:
        raise WorkspaceError(
            f"{dataset}: no labelled captures: export them (scripts/captures.py export --format yolo --out "
            f"{dataset}), label them, and import the labels (scripts/captures.py import --dataset {dataset} ...)"
        )
    held = [i for i in ids if in_holdout(i, share)]
    train = [i for i in ids if i not in held]
    if len(ids) >= 2 and not held:
        held, train = train[-1:], train[:-1]
    if len(ids) >= 2 and not train:
        train, held = held[:1], held[1:]
    return train, held


def dataset_items(dataset: Path, task: str, ids: list[str] | None = None) -> list[Item]:
    """The images (and labels) of a dataset ``retraining.datasets`` wrote, all or only ``ids``."""
    dataset = Path(dataset)
    wanted = set(ids) if ids is not None else None
    items = []
    if task_of(task).classifies:
        for image in sorted((dataset / "train").glob("*/*")):
            if is_image_file(image) and (wanted is None or image.stem in wanted):
                items.append(Item(image, None, image.parent.name))
        return items
    for image in sorted((dataset / "images").iterdir()):
        if is_image_file(image) and (wanted is None or image.stem in wanted):
            items.append(Item(image, dataset / "labels" / f"{image.stem}.txt"))
    return items


def split_dirs(data_yaml: Path, split: str) -> list[Path]:
    """The image folders (or list files) of one split of an Ultralytics data file."""
    data = _read(Path(data_yaml))
    base = Path(data.get("path") or Path(data_yaml).parent)
    if not base.is_absolute():
        base = (Path(data_yaml).parent / base).resolve()
    entries = data.get(split) or []
    return [base / e for e in ([entries] if isinstance(entries, str) else entries)]


def replay_items(train_data: Path | None, task: str, count: int, seed: int = 0) -> list[Item]:
    """``count`` images of the incumbent's training split, drawn with ``seed`` (none without train data)."""
    if train_data is None or count <= 0:
        return []
    train_data = Path(train_data)
    if not train_data.exists():
        raise WorkspaceError(
            f"{train_data}: the training data the archive records (--train-data) is gone: restore it, or package "
            "the incumbent again with --train-data pointing at it"
        )
    pool = []
    if task_of(task).classifies:
        folder = train_data / "train" if (train_data / "train").is_dir() else train_data
        pool = [Item(p, None, p.parent.name) for p in sorted(folder.glob("*/*")) if is_image_file(p)]
    else:
        data_yaml = train_data if train_data.is_file() else next(iter(sorted(train_data.glob("*.yaml"))), None)
        if data_yaml is None:
            raise WorkspaceError(f"{train_data}: no data yaml: --train-data takes the dataset's yaml file")
        for folder in split_dirs(data_yaml, "train"):
            pool += [
                Item(image, label_path(image)) for image in sorted(p for p in folder.rglob("*") if is_image_file(p))
            ]
    return random.Random(seed).sample(pool, min(count, len(pool)))


def frozen_items(gate_dir: Path | None) -> tuple[list[Item], dict]:
    """The incumbent's frozen gate set as items, and its gate.yaml (empty when the incumbent carries none)."""
    if gate_dir is None:
        return [], {}
    spec = _read(gate_dir / "gate.yaml")
    task, items = load_gate_set(gate_dir)
    if task_of(task).classifies:
        return [Item(item["image"], None, item["class"]) for item in items], spec
    found = []
    for item in items:
        label = gate_dir / "labels" / f"{item['image'].stem}.txt"
        found.append(Item(item["image"], label if label.is_file() else None))
    return found, spec


def _place(items: list[Item], folder: Path, prefix: str, task: str) -> int:
    """Link each item into ``folder`` (images/ + labels/, or <class>/ for classify), names prefixed."""
    for n, item in enumerate(items):
        name = f"{prefix}{n:05d}_{item.image.stem}"
        if task_of(task).classifies:
            link(item.image, folder / str(item.cls) / f"{name}{item.image.suffix.lower()}")
            continue
        link(item.image, folder / "images" / f"{name}{item.image.suffix.lower()}")
        label = folder / "labels" / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        if item.label is not None and item.label.is_file():
            link(item.label, label)
        else:
            label.write_text("")  # an image with nothing on it is a label too
    return len(items)


def _data_file(path: Path, root: Path, train, val: str, names: dict[int, str], extra: dict) -> Path:
    data = {"path": str(root), "train": train, "val": val, "names": names, **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def build_workspace(
    root: Path,
    dataset: Path,
    task: str,
    names: dict[int, str],
    train_data: Path | None,
    gate_dir: Path | None,
    replay_ratio: float = 1.0,
    share: float = HOLDOUT_SHARE,
    seed: int = 0,
) -> Workspace:
    """Lay out everything one retraining trains and is judged on under ``root`` (emptied first)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    train_ids, held_ids = split_labelled(dataset, share)
    captures, held = dataset_items(dataset, task, train_ids), dataset_items(dataset, task, held_ids)
    replay = replay_items(train_data, task, round(len(captures) * replay_ratio), seed)
    frozen, _ = frozen_items(gate_dir)
    if not held and not frozen:
        raise WorkspaceError(
            f"{dataset}: nothing to gate the candidate on: none of its {len(captures)} labelled captures falls in the "
            f"held-out share and there is no gate set to keep; label more captures, or package the incumbent with "
            "--gate-data"
        )
    extra = {k: v for k, v in _read(dataset / "data.yaml").items()
             if k in ("kpt_shape", "flip_idx", "kpt_names")} if not task_of(task).classifies else {}  # fmt: skip
    counts = {"captures": len(captures), "holdout": len(held), "replay": len(replay), "frozen": len(frozen)}
    if task_of(task).classifies:
        _place(captures, root / "train-set" / "train", "c", task)
        _place(replay, root / "train-set" / "train", "r", task)
        _place(held, root / "train-set" / "val", "h", task)
        _place(held, root / "holdout" / "val", "h", task)
        _place(frozen, root / "frozen" / "val", "f", task)
        for folder in ("holdout", "frozen"):  # Ultralytics' classify val wants a train/ beside val/
            (root / folder / "train").mkdir(parents=True, exist_ok=True)
            for cls in names.values():
                (root / folder / "train" / cls).mkdir(exist_ok=True)
                (root / folder / "val" / cls).mkdir(parents=True, exist_ok=True)
        train, holdout, frozen_data = root / "train-set", root / "holdout", root / "frozen" if frozen else None
    else:
        for folder, chosen, prefix in (("captures", captures, "c"), ("replay", replay, "r"), ("holdout", held, "h")):
            _place(chosen, root / folder, prefix, task)
            (root / folder / "images").mkdir(parents=True, exist_ok=True)
        _place(frozen, root / "frozen", "f", task)
        sources = ["captures/images"] + (["replay/images"] if replay else [])
        train = _data_file(root / "train.yaml", root, sources, "holdout/images", names, extra)
        holdout = _data_file(root / "holdout.yaml", root, "holdout/images", "holdout/images", names, extra)
        frozen_data = (
            _data_file(root / "frozen.yaml", root, "frozen/images", "frozen/images", names, extra) if frozen else None
        )
    gate = root / "gate"
    _place(frozen + held, gate, "g", task)
    if not task_of(task).classifies:
        _data_file(gate / "data.yaml", gate, "images", "images", names, extra)
    return Workspace(root, task, names, train, holdout, frozen_data, gate, counts)


def write_gate_spec(ws: Workspace, threshold: float, measured: float | None) -> None:
    """The candidate's gate.yaml: its task's metric, the threshold, and what it was set from."""
    spec = {
        "task": ws.task,
        "metric": METRICS[ws.task],
        "threshold": float(threshold),
        "measured": measured,
        "source": "the incumbent's frozen gate set plus the held-out captures (retraining)",
    }
    (ws.gate / "gate.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
