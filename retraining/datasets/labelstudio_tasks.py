"""What differs per task in Label Studio, one object per task (``LABEL_STUDIO[task]``): the regions that
offer an answer as a prediction to correct, the labeling config's controls, and a person's annotation read
back as YOLO label lines. labelstudio.py writes the project files and reads the export with them."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple
from xml.sax.saxutils import quoteattr

from quality.tasks import largest_polygon, task_of
from retraining.datasets.layout import DatasetError, class_names, label_line
from serving.yolo_contract import answer_items

LS_KEYPOINT_WIDTH = 0.5  # Label Studio's keypoint size, in percent of the image width


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


class Region(NamedTuple):
    """One result of a Label Studio prediction, before it gets the capture's id and the image size."""

    number: int | str
    type: str
    value: dict
    score: float
    from_name: str = "label"


@dataclass
class Annotated:
    """A person's annotation, its regions checked and normalised to [0, 1]: ``shapes`` (class id, corners or
    polygon points, region id), ``points`` (keypoint name, (x, y), parentID) and ``choices`` (class names)."""

    shapes: list[tuple[int, list[tuple[float, float]], str | None]] = field(default_factory=list)
    points: list[tuple[str, tuple[float, float], str | None]] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)


class LabelStudioTask(ABC):
    """How a task is labelled in Label Studio: the regions that offer an answer as a prediction to correct,
    the labeling config's controls, and an annotation read back as YOLO label lines. Each task below
    overrides only what differs from detection, as quality.tasks' task objects do."""

    task: str
    reads: frozenset[str]  # the result types an annotation of this task may hold

    @abstractmethod
    def regions(self, answer: dict, width: int, height: int) -> list[Region]:
        """The answer's items as the regions of a prediction to correct."""

    @abstractmethod
    def control(self, names: dict[int, str], keypoint_names: Iterable[str]) -> str:
        """The labeling config's controls (from_name ``label``, and ``keypoint`` for pose) on the image."""

    @abstractmethod
    def lines(self, where: str, annotated: Annotated, names: dict[int, str], kpt: tuple | None) -> list[str] | str:
        """An annotation as YOLO label lines (classify: the class name); DatasetError naming ``where``."""


class LabelStudioDetect(LabelStudioTask):
    """Detect: each object a rectangle, read back as the box enclosing what a person drew."""

    task = "detect"
    reads = frozenset({"rectanglelabels"})
    rotate = "false"  # whether a person may rotate a rectangle

    def regions(self, answer: dict, width: int, height: int) -> list[Region]:
        return [r for i, d in enumerate(answer_items(answer)) for r in self.object_regions(i, d, width, height)]

    def object_regions(self, number: int, found: dict, width: int, height: int) -> list[Region]:
        """One answered object's regions."""
        box = self.rectangle(found, width, height)
        return [Region(number, "rectanglelabels", box | {"rectanglelabels": [found["class"]]}, found["confidence"])]

    def rectangle(self, found: dict, width: int, height: int) -> dict:
        """An answered object's box as Label Studio's rectangle value."""
        return _ls_rectangle(*found["bbox"], width, height)

    def control(self, names: dict[int, str], keypoint_names: Iterable[str]) -> str:
        labels = _labels(class_names(names).values())
        rectangles = f'<RectangleLabels name="label" toName="image" canRotate="{self.rotate}">'
        return f"  {rectangles}{labels}\n  </RectangleLabels>"

    def lines(self, where: str, annotated: Annotated, names: dict[int, str], kpt: tuple | None) -> list[str] | str:
        return [label_line(c, _box_values(_envelope(xy))) for c, xy, _ in annotated.shapes]


class LabelStudioSegment(LabelStudioDetect):
    """Segment: each object its largest polygon; a rectangle a person draws is read as a 4-point polygon."""

    task = "segment"
    reads = frozenset({"polygonlabels", "rectanglelabels"})

    def object_regions(self, number: int, found: dict, width: int, height: int) -> list[Region]:
        points = [[_percent(x, width), _percent(y, height)] for x, y in largest_polygon(found)]
        value = {"points": points, "closed": True, "polygonlabels": [found["class"]]}
        return [Region(number, "polygonlabels", value, found["confidence"])]

    def control(self, names: dict[int, str], keypoint_names: Iterable[str]) -> str:
        labels = _labels(class_names(names).values())
        return f'  <PolygonLabels name="label" toName="image" strokeWidth="2">{labels}\n  </PolygonLabels>'

    def lines(self, where: str, annotated: Annotated, names: dict[int, str], kpt: tuple | None) -> list[str] | str:
        return _outline_lines(annotated)


class LabelStudioPose(LabelStudioDetect):
    """Pose: each object a rectangle plus its visible keypoints (from_name ``keypoint``), each keypoint read
    back into the box it belongs to (``_keypoint_owner``)."""

    task = "pose"
    reads = frozenset({"rectanglelabels", "keypointlabels"})

    def object_regions(self, number: int, found: dict, width: int, height: int) -> list[Region]:
        regions = super().object_regions(number, found, width, height)
        for j, k in enumerate(found.get("keypoints") or []):
            if task_of(self.task).is_visible(k, width, height):
                value = {
                    "x": _percent(k["x"], width),
                    "y": _percent(k["y"], height),
                    "width": LS_KEYPOINT_WIDTH,
                    "keypointlabels": [str(k["name"])],
                }
                regions.append(Region(f"{number}_k{j}", "keypointlabels", value, k["confidence"], "keypoint"))
        return regions

    def control(self, names: dict[int, str], keypoint_names: Iterable[str]) -> str:
        points = _labels(dict.fromkeys(keypoint_names))
        keypoints = f'\n  <KeyPointLabels name="keypoint" toName="image" strokeWidth="2">{points}\n  </KeyPointLabels>'
        return super().control(names, keypoint_names) + keypoints

    def lines(self, where: str, annotated: Annotated, names: dict[int, str], kpt: tuple | None) -> list[str] | str:
        envelopes = [_envelope(xy) for _, xy, _ in annotated.shapes]
        members: dict[int, dict[str, tuple[float, float]]] = {i: {} for i in range(len(envelopes))}
        for name, point, parent in annotated.points:
            owner = _keypoint_owner(point, parent, [rid for _, _, rid in annotated.shapes], envelopes)
            if owner is None:
                raise DatasetError(f"{where}: keypoint {name!r} without a box: draw the object's box too")
            if name in members[owner]:
                raise DatasetError(f"{where}: two {name!r} keypoints in one box: delete one in Label Studio")
            members[owner][name] = point
        lines = []
        (_, ndim), layout = kpt
        for i, envelope in enumerate(envelopes):
            values, cls = _box_values(envelope), annotated.shapes[i][0]
            strays = set(members[i]) - set(layout[cls])
            if strays:
                raise DatasetError(f"{where}: keypoints {sorted(strays)} are not keypoints of {names[cls]}: fix them")
            for name in layout[cls]:
                p = members[i].get(name)
                values += ([p[0], p[1], 2] if p else [0.0, 0.0, 0]) if ndim == 3 else list(p or (0.0, 0.0))
            lines.append(label_line(cls, values))
        return lines


class LabelStudioObb(LabelStudioDetect):
    """Obb: each object a rectangle a person may rotate, read back as its four corners."""

    task = "obb"
    rotate = "true"

    def rectangle(self, found: dict, width: int, height: int) -> dict:
        return _ls_rotated(found["obb"], width, height)

    def lines(self, where: str, annotated: Annotated, names: dict[int, str], kpt: tuple | None) -> list[str] | str:
        return _outline_lines(annotated)


class LabelStudioClassify(LabelStudioTask):
    """Classify: the top-1 class as a single choice, read back as the one class chosen."""

    task = "classify"
    reads = frozenset({"choices"})

    def regions(self, answer: dict, width: int, height: int) -> list[Region]:
        top = answer_items(answer)[0]
        return [Region(0, "choices", {"choices": [top["class"]]}, top["confidence"])]

    def control(self, names: dict[int, str], keypoint_names: Iterable[str]) -> str:
        choices = "".join(f"\n    <Choice value={quoteattr(n)}/>" for n in class_names(names).values())
        return f'  <Choices name="label" toName="image" choice="single" showInLine="true">{choices}\n  </Choices>'

    def lines(self, where: str, annotated: Annotated, names: dict[int, str], kpt: tuple | None) -> list[str] | str:
        if len(annotated.choices) != 1:
            raise DatasetError(
                f"{where}: {len(annotated.choices)} classes chosen where a classify label has one: "
                "fix it in Label Studio"
            )
        return annotated.choices[0]


LABEL_STUDIO = {
    m.task: m
    for m in (LabelStudioDetect(), LabelStudioSegment(), LabelStudioPose(), LabelStudioObb(), LabelStudioClassify())
}


def _labels(values: Iterable[str]) -> str:
    return "".join(f"\n    <Label value={quoteattr(n)}/>" for n in values)


def _envelope(xy: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    return min(x for x, _ in xy), min(y for _, y in xy), max(x for x, _ in xy), max(y for _, y in xy)


def _box_values(envelope: tuple[float, float, float, float]) -> list[float]:
    x1, y1, x2, y2 = envelope
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def _outline_lines(annotated: Annotated) -> list[str]:
    """Each region as a line of its points (a polygon's, or a rectangle's four corners)."""
    return [label_line(c, [v for p in xy for v in p]) for c, xy, _ in annotated.shapes]


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
