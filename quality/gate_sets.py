"""Gate sets: where a labelled gate set's images, labels and classes are in any layout it comes in, what its
items are, and the one layout an archive carries it in.

A gate set comes in the layouts Ultralytics' own datasets have (``find_gate_set``: a dataset yaml's
``val`` split, images/ + labels/, one folder per class or ``val/<class>/``); an archive carries it in
one (``write_gate_set``), with gate.yaml naming its task, metric and threshold. The deploy gate scores
the API's answers on its items with the task's metric (``quality.tasks``), and models/train_tasks.py
scores Ultralytics' own predictions (``quality.ultralytics_answers``) to set each archive's threshold.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageOps

from quality.tasks import METRICS, task_of
from serving.yolo_files import IMAGE_SUFFIXES, MappingError, is_image_file, label_path, read_mapping

GATE_YAML = "gate.yaml"
DATA_YAML = "data.yaml"
CLASSIFY_SPLITS = ("val", "test")  # Ultralytics' classify layout: the split a gate scores, in order of preference
LABEL_HOW = "Ultralytics finds an image's labels by replacing /images/ with /labels/ in its path"


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the upright image, EXIF orientation applied (as the API reports it)."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


def parse_label_line(task: str, line: str, width: int, height: int, names: dict[int, str], kpt_dim: int = 3) -> dict:
    """One YOLO label line -> an object in pixels: class_id, class, bbox and the task's geometry.

    A detect label may be a polygon, as Ultralytics allows: its enclosing box is the object. Pose
    keypoints are x y visibility, or x y (``kpt_dim`` 2, data.yaml's ``kpt_shape: [k, 2]``: all visible).
    A line of the wrong length for the task raises ValueError, an unknown class KeyError.
    """
    labels = task_of(task)
    values = line.split()
    cls, nums = int(values[0]), np.asarray(values[1:], np.float64)
    if not labels.fits(len(nums), kpt_dim):
        raise ValueError(f"{len(nums)} numbers after the class; a {task} label has {labels.label_shape}")
    return {"class_id": cls, "class": names[cls], **labels.geometry(nums, width, height, kpt_dim)}


class GateSetError(ValueError):
    """A gate set that cannot be read: one line naming the path at fault and what would fix it."""


@dataclass(frozen=True)
class GateSet:
    """Where the pieces of a gate set are, whatever its layout (``find_gate_set``); ``gate_items`` reads them."""

    root: Path  # the folder given (where gate.yaml is, if any)
    task: str
    spec: dict  # gate.yaml as written ({} when there is none)
    images: tuple[Path, ...]
    labels: tuple[Path, ...] | None  # each image's YOLO label file (one that is absent: no objects); None for classify
    classes: tuple[str, ...] | None  # classify: each image's class, the name of its folder
    names: dict[int, str]  # data.yaml names; classify: the class folders, in sorted order
    data: dict  # data.yaml as read ({} for classify)
    data_yaml: Path | None

    @property
    def kpt_names(self) -> list[str]:
        """The keypoint names data.yaml gives (Ultralytics keeps them per class; one skeleton is scored), or []."""
        names = self.data.get("kpt_names")
        if isinstance(names, dict):
            names = names.get(0, next(iter(names.values()), None))
        return [str(n) for n in names] if isinstance(names, list | tuple) else []


def _read_yaml(path: Path) -> dict:
    try:
        return read_mapping(path)
    except MappingError as exc:
        raise GateSetError(str(exc)) from None


def read_gate_yaml(root: Path) -> dict:
    """A gate set's gate.yaml (task, metric, threshold, how they were set); {} when the set has none."""
    path = Path(root) / GATE_YAML
    return _read_yaml(path) if path.is_file() else {}


def gate_spec(gate_dir: Path) -> dict:
    """gate.yaml of a gate set: task, metric, threshold (and how the threshold was measured)."""
    path = Path(gate_dir) / GATE_YAML
    if not path.is_file():
        raise GateSetError(
            f"{path} not found: it names the gate's task and threshold, e.g. 'task: detect', 'threshold: 0.5'"
        )
    spec = _read_yaml(path)
    if spec.get("task") not in METRICS:
        raise ValueError(f"{gate_dir}/gate.yaml: unknown task {spec.get('task')!r}")
    return spec


def find_gate_set(source: Path, task: str | None = None) -> GateSet:
    """Locate a gate set's images, labels and classes in any layout it comes in; refuse, saying what is missing.

    ``source`` is a folder, or the dataset yaml of one. The task is gate.yaml's, else ``task`` (packaging
    passes the weights'). Layouts, for detect, segment, pose and obb (YOLO label files; class names from
    data.yaml, or the yaml given):
      - Ultralytics' dataset yaml with a ``val`` split: ``path`` (relative to the yaml's folder; absent: that
        folder) and ``val`` (a folder, a .txt list of images, or a list of them); labels where Ultralytics
        looks: the image's path with its last ``/images/`` replaced by ``/labels/``
      - without ``val``: images/val + labels/val, images/ + labels/, or images beside a labels/ folder
    and for classify: one folder per class (``<class>/*.jpg``), or Ultralytics' ``val/<class>/*.jpg``
    (else ``test/``).
    """
    source = Path(source)
    if source.is_file() and source.suffix in (".yaml", ".yml") and source.name != GATE_YAML:
        root, data_yaml = source.parent, source
    elif source.is_dir():
        root, data_yaml = source, source / DATA_YAML
    elif source.exists():
        raise GateSetError(f"{source} is neither a folder nor a dataset .yaml; give the gate set's folder")
    else:
        raise GateSetError(f"{source} does not exist")
    spec = read_gate_yaml(root)
    task = spec.get("task") or task
    if task is None:
        raise GateSetError(
            f"no task for the gate set {root}: write task: detect (or {', '.join(list(METRICS)[1:])}) in "
            f"{root / GATE_YAML}"
        )
    if task not in METRICS:
        raise GateSetError(f"{root / GATE_YAML}: unknown task {task!r}; one of {', '.join(METRICS)}")
    if spec.get("metric") not in (None, METRICS[task]):
        raise GateSetError(
            f"{root / GATE_YAML}: metric {spec['metric']!r} is not how a {task} gate is scored; "
            f"write metric: {METRICS[task]} or leave it out"
        )
    if task_of(task).classifies:
        return _classify_set(root, spec, task)
    return _labelled_set(root, data_yaml, task, spec)


def _names(data: dict, data_yaml: Path) -> dict[int, str]:
    names = data.get("names")
    if isinstance(names, list | tuple):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise GateSetError(
            f"{data_yaml} has no names: list the classes the label files number, e.g. names: {{0: person, 1: car}}"
        )
    try:
        return {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        raise GateSetError(f"{data_yaml}: names must map class ids to names, e.g. {{0: person}}; got {names}") from None


def _check_labels(pairs: list[tuple[Path, Path]], where: Path) -> None:
    """Refuse images none of which has a label file: a wrong labels folder, not a set of empty images."""
    if any(label.is_file() for _, label in pairs):
        return
    image, label = pairs[0]
    folder = label.parent
    if not folder.is_dir():
        raise GateSetError(
            f"no labels folder {folder} for the images in {where}: put each image's YOLO label file there "
            f"({label.name} for {image.name}); {LABEL_HOW}"
        )
    raise GateSetError(
        f"{folder} has no label file for any of the {len(pairs)} images in {where} (e.g. {label.name} for "
        f"{image.name}); {LABEL_HOW}"
    )


def _labelled_set(root: Path, data_yaml: Path, task: str, spec: dict) -> GateSet:
    if not data_yaml.is_file():
        others = sorted(p.name for p in root.glob("*.y*ml") if p.name != GATE_YAML)
        hint = (
            f"; if {others[0]} is the dataset yaml, give it instead: --gate-data {root / others[0]}" if others else ""
        )
        raise GateSetError(
            f"{data_yaml} not found: a {task} gate set needs one naming its classes and where its images are, "
            f"e.g. 'names: {{0: person, 1: car}}' and 'val: images/val'{hint}"
        )
    data = _read_yaml(data_yaml)
    names = _names(data, data_yaml)
    pairs = _val_split(data, data_yaml) if "val" in data else _folder_layout(root, data_yaml)
    return GateSet(
        root,
        task,
        spec,
        tuple(image for image, _ in pairs),
        tuple(label for _, label in pairs),
        None,
        names,
        data,
        data_yaml,
    )


def _val_split(data: dict, data_yaml: Path) -> list[tuple[Path, Path]]:
    """The images and labels of a dataset yaml's ``val`` split, as Ultralytics resolves them."""
    home = data_yaml.parent
    raw = data.get("path")
    # an absolute path stays as it is
    base = home if raw in (None, "") else Path(os.path.normpath(home / Path(str(raw)).expanduser()))
    if not base.is_dir():
        raise GateSetError(
            f"{data_yaml}: path: {raw} is {base}, which is not a folder; fix path: (a relative one is read from "
            f"{home}) or remove it to mean the yaml's own folder"
        )
    entries = data["val"] if isinstance(data["val"], list) else [data["val"]]
    if not entries or any(e in (None, "") for e in entries):
        raise GateSetError(
            f"{data_yaml}: val: is empty; name the folder of the images to gate on, e.g. val: images/val"
        )
    pairs: list[tuple[Path, Path]] = []
    for entry in entries:
        where = base / Path(str(entry)).expanduser()
        if where.is_dir():
            images = sorted(p for p in where.rglob("*") if is_image_file(p))
        elif where.is_file() and where.suffix == ".txt":
            images = _listed_images(where)
        else:
            raise GateSetError(
                f"{data_yaml}: val: {entry} is {where}, which does not exist; put the validation images there "
                f"or point val: at their folder (relative to {base})"
            )
        if not images:
            raise GateSetError(
                f"{data_yaml}: val: {entry} ({where}) holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        split = [(image, label_path(image)) for image in images]
        _check_labels(split, where)
        pairs += split
    return pairs


def _listed_images(listing: Path) -> list[Path]:
    """The images a split's .txt lists, one a line (relative lines are read from the list's folder)."""
    images = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image = listing.parent / Path(line.strip()).expanduser()
        if not is_image_file(image):
            raise GateSetError(f"{listing}:{number}: {line.strip()} is not an image file ({image})")
        images.append(image)
    return images


def _folder_layout(root: Path, data_yaml: Path) -> list[tuple[Path, Path]]:
    """No ``val`` in data.yaml: images/val + labels/val, images/ + labels/, or images beside labels/."""
    split = root / "images" / "val"
    if split.is_dir():
        pairs = [(p, label_path(p)) for p in sorted(split.rglob("*")) if is_image_file(p)]
        where = split
    elif (root / "images").is_dir():
        where = root / "images"
        pairs = [(p, label_path(p)) for p in sorted(where.iterdir()) if is_image_file(p)]
    else:
        where = root
        pairs = [(p, root / "labels" / f"{p.stem}.txt") for p in sorted(root.iterdir()) if is_image_file(p)]
    if not pairs:
        folders = sorted(p.name for p in where.iterdir() if p.is_dir()) if where != root else []
        inside = f" ({where} holds only the folders {', '.join(folders)})" if folders else ""
        raise GateSetError(
            f"{data_yaml} has no val: and there are no images in {root}/images/val, {root}/images or {root}{inside}; "
            f"add val: with the folder of the images to gate on (relative to {root}) to {data_yaml}, e.g. "
            "val: images/val"
        )
    _check_labels(pairs, where)
    return pairs


def _class_images(folder: Path) -> list[tuple[Path, str]]:
    """``folder/<class>/<image>`` pairs, sorted."""
    if not folder.is_dir():
        return []
    return [
        (image, cls.name)
        for cls in sorted(p for p in folder.iterdir() if p.is_dir())
        for image in sorted(cls.iterdir())
        if is_image_file(image)
    ]


def _classify_set(root: Path, spec: dict, task: str) -> GateSet:
    pairs: list[tuple[Path, str]] = []
    for split in CLASSIFY_SPLITS:  # a split folder holds class folders, no images of its own
        folder = root / split
        if folder.is_dir() and not any(is_image_file(p) for p in folder.iterdir()):
            pairs = _class_images(folder)
            if pairs:
                break
    else:
        pairs = _class_images(root)
    if not pairs:
        unused = " (train/ is not used: a gate scores held-out images)" if (root / "train").is_dir() else ""
        raise GateSetError(
            f"no gate images in {root}: a classify gate set is one folder per class ({root}/<class>/*.jpg), or "
            f"Ultralytics' layout with the split to gate on ({root}/val/<class>/*.jpg or {root}/test/<class>/*.jpg)"
            f"{unused}"
        )
    classes = tuple(cls for _, cls in pairs)
    names = dict(enumerate(sorted(set(classes))))
    return GateSet(root, task, spec, tuple(image for image, _ in pairs), None, classes, names, {}, None)


def _size(image: Path) -> tuple[int, int]:
    try:
        return image_size(image)
    except (OSError, ValueError, ImportError) as exc:  # ImportError: Ultralytics' patched Image.open, once imported,
        # answers an unreadable file by importing pi_heif, which is not installed
        raise GateSetError(f"{image} is not a readable image: {exc}") from None


def gate_items(gate: GateSet) -> list[dict]:
    """Read a located gate set into items, one per image (see ``load_gate_set``)."""
    if task_of(gate.task).classifies:
        return [
            {"image": image, **dict(zip(("width", "height"), _size(image), strict=True)), "class": cls}
            for image, cls in zip(gate.images, gate.classes, strict=True)
        ]
    kpt_names = gate.kpt_names
    shape = gate.data.get("kpt_shape")
    kpt_dim = int(shape[1]) if isinstance(shape, list | tuple) and len(shape) == 2 and shape[1] in (2, 3) else 3
    items = []
    for image, label in zip(gate.images, gate.labels, strict=True):
        width, height = _size(image)
        lines = label.read_text().splitlines() if label.is_file() else []
        objects = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = parse_label_line(gate.task, line, width, height, gate.names, kpt_dim)
            except KeyError as exc:
                raise GateSetError(
                    f"{label}:{number}: class {exc.args[0]} is not in the names of {gate.data_yaml}"
                ) from None
            except (ValueError, IndexError) as exc:
                raise GateSetError(f"{label}:{number}: {line.strip()!r} is not a {gate.task} label: {exc}") from None
            for i, kpt in enumerate(obj.get("keypoints", [])):
                kpt.append(kpt_names[i] if i < len(kpt_names) else str(i))
            objects.append(obj)
        items.append({"image": image, "width": width, "height": height, "objects": objects})
    return items


def load_gate_set(gate_dir: Path, task: str | None = None) -> tuple[str, list[dict]]:
    """Read a gate set in any layout ``find_gate_set`` knows into (task, items), one item per image.

    Items: {"image": Path, "width", "height", "objects": [...]} with objects as parse_label_line
    gives them (YOLO label files, data.yaml names and, for pose, kpt_names: without them a keypoint
    is named by its index), or for classify {"image", "width", "height", "class"} from the <class>/
    folder the image is in. ``task`` is used when the set has no gate.yaml naming one.
    """
    gate = find_gate_set(gate_dir, task)
    return gate.task, gate_items(gate)


def write_gate_set(gate: GateSet, dest: Path, spec: dict) -> Path:
    """Copy a located gate set into ``dest`` in the one layout an archive carries, with ``spec`` as its gate.yaml.

    Layout: images/ + labels/ + data.yaml (``val: images``, the names, and pose's keypoint keys), or one
    folder per class for classify. File names are kept unless two would clash (then numbered).
    """
    dest = Path(dest)
    dest.mkdir(parents=True)
    if task_of(gate.task).classifies:
        for cls in sorted(set(gate.classes)):
            members = [image for image, c in zip(gate.images, gate.classes, strict=True) if c == cls]
            for image, name in zip(members, _unique_names(members), strict=True):
                (dest / cls).mkdir(exist_ok=True)
                shutil.copyfile(image, dest / cls / name)
    else:
        (dest / "images").mkdir()
        (dest / "labels").mkdir()
        for image, label, name in zip(gate.images, gate.labels, _unique_names(gate.images), strict=True):
            shutil.copyfile(image, dest / "images" / name)
            if label.is_file():
                shutil.copyfile(label, dest / "labels" / f"{Path(name).stem}.txt")
        data = {"val": "images", "names": gate.names}
        data.update({k: gate.data[k] for k in ("kpt_shape", "flip_idx", "kpt_names") if k in gate.data})
        (dest / DATA_YAML).write_text(yaml.safe_dump(data, sort_keys=False))
    (dest / GATE_YAML).write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest


def _unique_names(images: Sequence[Path]) -> list[str]:
    """File names for images gathered from several folders: their own, numbered where two share a stem."""
    stems = Counter(image.stem for image in images)
    return [image.name if stems[image.stem] == 1 else f"{i:04d}_{image.name}" for i, image in enumerate(images)]
