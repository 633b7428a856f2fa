"""Capture policy: which answers of a model are kept, decided on the request path from the answer alone.

``GATEWAY_CAPTURE_POLICY`` names a YAML file with one ``CapturePolicy`` per model; a model it does not
name is never captured. The decision (a random draw, a confidence close to the threshold, a class, the
number of detections, a boost while the answering version's drift alarm is on, the caps) costs
microseconds; ``per_model`` also reads the retraining trigger's policy file, which has the same layout.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.yolo_contract import answer_found, answer_items, answer_task, locates
from serving.yolo_files import MappingError, read_mapping


class Caps(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minute: int | None = Field(None, ge=0, description="most captures in any 60 s")
    hour: int | None = Field(None, ge=0, description="most captures in any hour")
    day: int | None = Field(None, ge=0, description="most captures in any 24 h")


class Retention(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: float | None = Field(None, gt=0, description="captures older than this are purged")
    mb: float | None = Field(None, gt=0, description="past this many MB of images the oldest are purged")


class NearDuplicate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    distance: int = Field(6, ge=0, le=64, description="perceptual-hash bits (of 64) at or under which it is the same")
    window_s: float = Field(60.0, ge=0, description="compared with the captures of the last window_s seconds")


class CapturePolicy(BaseModel):
    """What of one model's traffic is kept. Every rule is off unless set; a request matching any is captured."""

    model_config = ConfigDict(extra="forbid")
    random: float = Field(0.0, ge=0, le=1, description="share of all answers captured at random")
    near_threshold: float = Field(
        0.0, ge=0, le=1, description="capture when a detection's confidence is within this of conf (classify: "
        "when the top two classes are within it)"
    )  # fmt: skip
    conf: float | None = Field(None, gt=0, le=1, description="the threshold near_threshold is about (default: "
                               "the request's conf, else the archive's)")  # fmt: skip
    classes: list[str] = Field(default_factory=list, description="capture any answer naming one of these classes")
    no_detections: bool = Field(False, description="capture answers with no detection")
    more_than: int | None = Field(None, ge=0, description="capture answers with more detections than this")
    drift_boost: float = Field(1.0, ge=1, description="the random share is multiplied by this while the answering "
                               "version's drift alarm is on")  # fmt: skip
    caps: Caps = Field(default_factory=Caps)
    quota_mb: float | None = Field(None, gt=0, description="images stored never exceed this; past it, dropped")
    retention: Retention = Field(default_factory=Retention)
    near_duplicate: NearDuplicate = Field(default_factory=NearDuplicate)


def per_model(path: Path, kind: type[BaseModel], what: str) -> dict:
    """A YAML file of one ``kind`` section per model, validated; ValueError naming the file and the key."""
    try:
        data = read_mapping(path)
    except MappingError as exc:
        raise ValueError(f"{what}: {exc} (a mapping of model name to policy, e.g. 'yolo: {{...}}')") from None
    found = {}
    for model, section in data.items():
        try:
            found[str(model)] = kind.model_validate(section or {})
        except ValidationError as exc:
            where = "; ".join(f"{model}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{what} {path}: {where}") from None
    return found


def load_policies(path: Path | None) -> dict[str, CapturePolicy]:
    """The policies of ``GATEWAY_CAPTURE_POLICY`` by model (none when unset)."""
    return per_model(path, CapturePolicy, "capture policy") if path is not None else {}


def reasons(policy: CapturePolicy, answer: dict, conf: float, alarmed: bool, draw: float) -> list[str]:
    """Why this answer is captured (empty: it is not). ``draw`` is uniform in [0, 1)."""
    found = []
    boosted = min(1.0, policy.random * policy.drift_boost) if alarmed else policy.random
    if draw < policy.random:
        found.append("random")
    elif draw < boosted:
        found.append("drift")
    items = answer_items(answer)
    located = locates(answer_task(answer))
    scores = [item["confidence"] for item in items]
    if policy.near_threshold:
        if located:
            near = any(abs(s - conf) <= policy.near_threshold for s in scores)
        else:  # a classifier: its top two classes are close
            near = len(scores) > 1 and scores[0] - scores[1] <= policy.near_threshold
        if near:
            found.append("near_threshold")
    named = {item["class"] for item in answer_found(answer)}
    found += [f"class:{name}" for name in policy.classes if name in named]
    if located and policy.no_detections and not items:
        found.append("no_detections")
    if located and policy.more_than is not None and len(items) > policy.more_than:
        found.append("many_detections")
    return found


class Window:
    """Times of the captures of the last day, to answer "how many in the last N seconds" for the caps.

    The request path reads it while the capture worker's thread adds to it: a lock keeps them apart."""

    def __init__(self, times: list[float] | None = None):
        self.times: deque[float] = deque(sorted(times or []))
        self.lock = threading.Lock()

    def add(self, when: float) -> None:
        with self.lock:
            self.times.append(when)

    def over(self, caps: Caps, now: float) -> str | None:
        """The first cap reached at ``now`` (cap_minute, cap_hour, cap_day), or None; counts at most the cap."""
        with self.lock:
            while self.times and self.times[0] <= now - 86400:
                self.times.popleft()
            for name, span, cap in (("minute", 60, caps.minute), ("hour", 3600, caps.hour), ("day", 86400, caps.day)):
                if cap is not None and self._count_since(now - span, cap) >= cap:
                    return f"cap_{name}"
        return None

    def _count_since(self, start: float, enough: int) -> int:
        """Captures after ``start``, newest first, counting no further than ``enough``."""
        found = 0
        for when in reversed(self.times):
            if when <= start or found >= enough:
                break
            found += 1
        return found
