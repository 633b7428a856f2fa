"""The deploy gate's arithmetic: read a labelled gate set and score a model's answers on it.

One place for the math, used twice: the deploy gate scores the API's answers (the JSON of
notes/contract.md) and models/train_tasks.py scores Ultralytics' own predictions, converted
to the same JSON by quality/reference.py, to set each archive's threshold.

Metrics (one per task):
  detect, segment, obb  recall: share of labelled objects found by a prediction of the same
                        class at IoU >= 0.5 (box, mask and rotated-box IoU respectively)
  pose                  PCK: share of labelled visible keypoints predicted within
                        0.1 x max(w, h) of the labelled box, by a detection matched at box IoU >= 0.5
  classify              top-1 accuracy

A gate set comes in the layouts Ultralytics' own datasets have (``find_gate_set``: a dataset yaml's
``val`` split, images/ + labels/, one folder per class or ``val/<class>/``); an archive carries it in
one (``write_gate_set``), with gate.yaml naming its task, metric and threshold.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image, ImageOps

from serving.yolo_contract import answer_items
from serving.yolo_files import IMAGE_SUFFIXES, MappingError, is_image_file, label_path, read_mapping

IOU_MATCH = 0.5
PCK_FRACTION = 0.1
METRICS = {"detect": "recall", "segment": "recall", "obb": "recall", "pose": "pck", "classify": "top1"}
GATE_YAML = "gate.yaml"
DATA_YAML = "data.yaml"
CLASSIFY_SPLITS = ("val", "test")  # Ultralytics' classify layout: the split a gate scores, in order of preference
LABEL_HOW = "Ultralytics finds an image's labels by replacing /images/ with /labels/ in its path"


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two axis-aligned boxes [x1, y1, x2, y2]."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def rasterise(polygons: Sequence[Sequence[Sequence[float]]], width: int, height: int) -> np.ndarray:
    """Boolean mask (height, width) of the union of filled polygons (pixel coordinates, 1/16 px precision)."""
    mask = np.zeros((height, width), np.uint8)
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2) * 16).astype(np.int32) for p in polygons if len(p) >= 3]
    if pts:
        cv2.fillPoly(mask, pts, 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def polygon_area(corners: Sequence[Sequence[float]]) -> float:
    """Area of a simple polygon (shoelace formula)."""
    p = np.asarray(corners, np.float64).reshape(-1, 2)
    return float(abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))) / 2)


def rotated_iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Exact IoU of two convex quadrilaterals given by their corners (any order around the outline)."""
    pa, pb = (cv2.convexHull(np.asarray(c, np.float32).reshape(-1, 2)).reshape(-1, 2) for c in (a, b))
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    union = polygon_area(pa) + polygon_area(pb) - inter
    return float(inter / union) if union > 0 else 0.0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the upright image, EXIF orientation applied (as the API reports it)."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


LABEL_SHAPES = {
    "detect": "4 numbers (cx cy w h) or a polygon",
    "segment": "a polygon (3 or more x y pairs)",
    "obb": "8 numbers (4 corners x y)",
    "pose": "4 box numbers (cx cy w h), then x y visibility per keypoint (x y with kpt_shape [k, 2])",
}


def parse_label_line(task: str, line: str, width: int, height: int, names: dict[int, str], kpt_dim: int = 3) -> dict:
    """One YOLO label line -> an object in pixels: class_id, class, bbox and the task's geometry.

    A detect label may be a polygon, as Ultralytics allows: its enclosing box is the object. Pose
    keypoints are x y visibility, or x y (``kpt_dim`` 2, data.yaml's ``kpt_shape: [k, 2]``: all visible).
    A line of the wrong length for the task raises ValueError, an unknown class KeyError.
    """
    values = line.split()
    cls, nums = int(values[0]), np.asarray(values[1:], np.float64)
    obj: dict = {"class_id": cls, "class": names[cls]}
    n = len(nums)
    polygon = n >= 6 and n % 2 == 0
    fits = {"detect": n == 4 or polygon, "segment": polygon, "obb": n == 8, "pose": n >= 4 and (n - 4) % kpt_dim == 0}
    if not fits[task]:
        raise ValueError(f"{n} numbers after the class; a {task} label has {LABEL_SHAPES[task]}")
    if task == "pose" or (task == "detect" and n == 4):
        cx, cy, bw, bh = nums[:4] * [width, height, width, height]
        obj["bbox"] = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        if task == "pose":
            kpts = nums[4:].reshape(-1, kpt_dim)
            obj["keypoints"] = [[k[0] * width, k[1] * height, k[2] if kpt_dim == 3 else 2.0] for k in kpts.tolist()]
        return obj
    pts = (nums.reshape(-1, 2) * [width, height]).tolist()
    if task != "detect":
        obj["polygon" if task == "segment" else "corners"] = pts
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    obj["bbox"] = [min(xs), min(ys), max(xs), max(ys)]
    return obj


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
    if task == "classify":
        return _classify_set(root, spec)
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


def _classify_set(root: Path, spec: dict) -> GateSet:
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
    return GateSet(root, "classify", spec, tuple(image for image, _ in pairs), None, classes, names, {}, None)


def _size(image: Path) -> tuple[int, int]:
    try:
        return image_size(image)
    except (OSError, ValueError, ImportError) as exc:  # ImportError: Ultralytics' patched Image.open, once imported,
        # answers an unreadable file by importing pi_heif, which is not installed
        raise GateSetError(f"{image} is not a readable image: {exc}") from None


def gate_items(gate: GateSet) -> list[dict]:
    """Read a located gate set into items, one per image (see ``load_gate_set``)."""
    if gate.task == "classify":
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
    if gate.task == "classify":
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


def _found(answer: dict) -> list[dict]:
    """What an answer found, best first; an error answer found nothing, so all its objects count as missed."""
    if answer.get("status") != "success":
        return []
    return sorted(answer_items(answer), key=lambda d: -d["confidence"])


def match(truth: list[dict], predictions: list[dict], iou: Callable[[dict, dict], float]) -> dict[int, int]:
    """Greedy matching, best prediction first: each takes the unmatched same-class object it overlaps most
    at IoU >= 0.5. Returns {truth index: prediction index}."""
    matched: dict[int, int] = {}
    for p_idx, pred in enumerate(predictions):
        best, best_iou = None, IOU_MATCH
        for t_idx, obj in enumerate(truth):
            if t_idx in matched or obj["class"] != pred["class"]:
                continue
            value = iou(obj, pred)
            if value >= best_iou:
                best, best_iou = t_idx, value
        if best is not None:
            matched[best] = p_idx
    return matched


def _box_pair(obj: dict, pred: dict) -> float:
    return box_iou(obj["bbox"], pred["bbox"])


def _obb_pair(obj: dict, pred: dict) -> float:
    return rotated_iou(obj["corners"], pred["corners"])


def _recall(task: str, items: list[dict], answers: list[dict]) -> float:
    found = total = 0
    for item, answer in zip(items, answers, strict=True):
        preds = _found(answer)
        if task == "segment":
            size = item["width"], item["height"]
            truth_masks = [rasterise([o["polygon"]], *size) for o in item["objects"]]
            pred_masks = [rasterise(p.get("polygons", []), *size) for p in preds]

            def pair(obj: dict, pred: dict, _t=truth_masks, _p=pred_masks, _o=item["objects"], _d=preds) -> float:
                return mask_iou(_t[_o.index(obj)], _p[_d.index(pred)])

        else:
            pair = _obb_pair if task == "obb" else _box_pair
        found += len(match(item["objects"], preds, pair))
        total += len(item["objects"])
    if not total:
        raise ValueError("gate set has no labelled objects")
    return found / total


def _default_names(names: Sequence[str]) -> bool:
    """Keypoint names that are only their indices: what a side without ``kpt_names`` calls its keypoints."""
    return list(names) == [str(i) for i in range(len(names))]


def paired_keypoints(truth_names: Sequence[str], predicted: Sequence[dict]) -> list[dict | None]:
    """A detection's keypoints in the order of the labelled ones: by name when both sides name them
    (``kpt_names`` in the weights and in data.yaml), by index when either does not (``kpt_names`` is
    optional in Ultralytics datasets) or their names share none."""
    pred_names = [str(k.get("name")) for k in predicted]
    if not (_default_names(truth_names) or _default_names(pred_names)) and set(truth_names) & set(pred_names):
        by_name = {str(k.get("name")): k for k in predicted}
        return [by_name.get(name) for name in truth_names]
    return [predicted[i] if i < len(predicted) else None for i in range(len(truth_names))]


def _pck(items: list[dict], answers: list[dict]) -> float:
    hits = total = 0
    for item, answer in zip(items, answers, strict=True):
        preds = _found(answer)
        pairs = match(item["objects"], preds, _box_pair)
        for t_idx, obj in enumerate(item["objects"]):
            x1, y1, x2, y2 = obj["bbox"]
            radius = PCK_FRACTION * max(x2 - x1, y2 - y1)
            predicted = (preds[pairs[t_idx]].get("keypoints") or []) if t_idx in pairs else []
            guesses = paired_keypoints([k[3] for k in obj["keypoints"]], predicted)
            for (x, y, v, _), guess in zip(obj["keypoints"], guesses, strict=True):
                if v <= 0:
                    continue
                total += 1
                hits += guess is not None and np.hypot(guess["x"] - x, guess["y"] - y) <= radius
    if not total:
        raise ValueError("gate set has no visible keypoints")
    return float(hits / total)


def _top1(items: list[dict], answers: list[dict]) -> float:
    right = 0
    for item, answer in zip(items, answers, strict=True):
        ranked = _found(answer)
        right += bool(ranked) and ranked[0]["class"] == item["class"]
    if not items:
        raise ValueError("gate set has no images")
    return right / len(items)


def score(task: str, truth_items: list[dict], answers: list[dict]) -> float:
    """The task's gate metric in [0, 1] for answers (contract JSON bodies, one per item, same order)."""
    if len(truth_items) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(truth_items)} gate images")
    if task == "pose":
        return _pck(truth_items, answers)
    if task == "classify":
        return _top1(truth_items, answers)
    if task in ("detect", "segment", "obb"):
        return _recall(task, truth_items, answers)
    raise ValueError(f"unknown task {task!r}")


def threshold_from(measured: float, margin: float = 0.1, step: float = 0.05, ceiling: float = 0.9) -> float:
    """Gate threshold for a freshly measured metric: margin below it, floored to a step, at most the ceiling."""
    return round(min(max(np.floor((measured - margin) / step + 1e-9) * step, 0.0), ceiling), 2)
