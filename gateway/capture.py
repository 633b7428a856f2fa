"""Capture: a share of production images, kept with what the model answered, for labelling and retraining.

Off by default. ``GATEWAY_CAPTURE_POLICY`` names a YAML file with one policy per model (see
``CapturePolicy``); a model it does not name is never captured. The decision is taken on the
request path from the answer alone (a random draw, a confidence close to the threshold, a
class, the number of detections, a boost while the answering version's drift alarm is on) and
costs microseconds; everything else (hashing, the near-duplicate check, the disk, the state
store) runs on a worker off the request path, behind a bounded queue. A full queue, a cap, the
quota, a full disk or a failing store drops the capture and counts it in
``gateway_capture_dropped_total``; the answer is never delayed or failed by it.

The bytes are kept as uploaded, content-addressed (``<dir>/<model>/blobs/<sha[:2]>/<sha256>``,
mode 0600); one manifest row per capture goes into the state store (``capture/<model>/<id>``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.state import StateError, StateStore

logger = logging.getLogger(__name__)
QUEUE_IMAGES = 64  # captures waiting for the worker; past it they are dropped (queue_full)
QUEUE_BYTES = 64 * 1024 * 1024
DISK_RESERVE = 256 * 1024 * 1024  # free space the captures never take
SWEEP_EVERY_S = 60.0
DEFAULT_CONF = 0.25  # the handler's default, for archives that do not report theirs
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}


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
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a mapping of model name to policy, e.g. 'yolo: {{...}}'")
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
    items = answer.get("detections")
    scores = (
        [d["confidence"] for d in items] if items is not None else [c["confidence"] for c in answer["classifications"]]
    )
    if policy.near_threshold:
        if items is not None:
            near = any(abs(s - conf) <= policy.near_threshold for s in scores)
        else:
            near = len(scores) > 1 and scores[0] - scores[1] <= policy.near_threshold
        if near:
            found.append("near_threshold")
    named = {d["class"] for d in (items if items is not None else answer["classifications"][:1])}
    found += [f"class:{name}" for name in policy.classes if name in named]
    if items is not None and policy.no_detections and not items:
        found.append("no_detections")
    if items is not None and policy.more_than is not None and len(items) > policy.more_than:
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


_DCT = np.cos(np.pi * (2 * np.arange(32)[None, :] + 1) * np.arange(32)[:, None] / 64)


def phash(data: bytes) -> int:
    """64-bit perceptual hash: signs of the 8x8 lowest frequencies of a 32x32 DCT of the luma against their median."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (64, 64))  # a JPEG decodes at 1/8 of its size (or the fraction that stays >= 64 px)
        luma = ImageOps.exif_transpose(image).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
    coefficients = (_DCT @ np.asarray(luma, np.float64) @ _DCT.T)[:8, :8].ravel()
    bits = coefficients > np.median(coefficients)
    return int(np.packbits(bits).view(">u8")[0])


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def media_type(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return MEDIA_TYPES.get(image.format or "", "application/octet-stream")


def capture_key(model: str, capture_id: str = "") -> str:
    return f"capture/{model}/{capture_id}"


@dataclass
class Holdings:
    """What one model's captures hold, kept in memory beside the rows (loaded from them on first use)."""

    bytes: int = 0
    shas: dict[str, str] = field(default_factory=dict)  # sha256 -> capture id
    window: Window = field(default_factory=Window)
    recent: deque = field(default_factory=deque)  # (time, phash) of the last near-duplicate window


class CaptureStore:
    """Images on disk (content-addressed, 0600) and their manifest rows in the state store."""

    def __init__(self, directory: Path, state: StateStore):
        self.directory = Path(directory)
        self.state = state
        self.holdings: dict[str, Holdings] = {}

    def blob_path(self, model: str, sha256: str) -> Path:
        return self.directory / model / "blobs" / sha256[:2] / sha256

    def rows(self, model: str) -> list[dict]:
        """Every capture of ``model``, oldest first."""
        return [row for _, row in self.state.scan(capture_key(model))]

    def get(self, model: str, capture_id: str) -> dict | None:
        return self.state.get(capture_key(model, capture_id))

    def read(self, row: dict) -> bytes:
        return self.blob_path(row["model"], row["sha256"]).read_bytes()

    def held(self, model: str) -> Holdings:
        if model not in self.holdings:
            rows = self.rows(model)
            self.holdings[model] = Holdings(
                bytes=sum(row["size"] for row in rows),
                shas={row["sha256"]: row["id"] for row in rows},
                window=Window([row["time"] for row in rows]),
                recent=deque(sorted((row["time"], int(row["phash"], 16)) for row in rows)[-1000:]),
            )
        return self.holdings[model]

    def near_duplicate(self, model: str, policy: CapturePolicy, fingerprint: int, now: float) -> bool:
        recent = self.held(model).recent
        while recent and recent[0][0] < now - policy.near_duplicate.window_s:
            recent.popleft()
        return any(distance(fingerprint, other) <= policy.near_duplicate.distance for _, other in recent)

    def add(self, row: dict, data: bytes) -> None:
        """Write the image (0600, atomically) and its row; on a store error the image is removed again."""
        path = self.blob_path(row["model"], row["sha256"])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(partial, path)
            self.state.put(capture_key(row["model"], row["id"]), row)
        except BaseException:
            partial.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise
        held = self.held(row["model"])
        held.bytes += row["size"]
        held.shas[row["sha256"]] = row["id"]
        held.window.add(row["time"])
        held.recent.append((row["time"], int(row["phash"], 16)))

    def purge(self, model: str, ids: list[str] | None = None, before: float | None = None) -> list[str]:
        """Delete captures by id, or every one taken before ``before`` (epoch seconds); the ids deleted."""
        rows = self.rows(model)
        chosen = [
            r for r in rows if (ids is not None and r["id"] in ids) or (before is not None and r["time"] < before)
        ]
        return self._delete(model, chosen)

    def sweep(self, model: str, policy: CapturePolicy, now: float) -> list[str]:
        """Apply the retention: drop what is older than its days, then the oldest past its size."""
        rows = self.rows(model)
        keep_after = now - policy.retention.days * 86400 if policy.retention.days else None
        old = [row for row in rows if keep_after is not None and row["time"] < keep_after]
        kept = [row for row in rows if keep_after is None or row["time"] >= keep_after]  # oldest first (ids are)
        if policy.retention.mb:
            left = sum(row["size"] for row in kept)
            for row in kept:
                if left <= policy.retention.mb * 1e6:
                    break
                old.append(row)
                left -= row["size"]
        return self._delete(model, old)

    def _delete(self, model: str, rows: list[dict]) -> list[str]:
        held = self.held(model)
        for row in rows:
            self.state.delete(capture_key(model, row["id"]))
            self.blob_path(model, row["sha256"]).unlink(missing_ok=True)
            held.bytes -= row["size"]
            held.shas.pop(row["sha256"], None)
        if rows:
            self.holdings.pop(model, None)  # the window and the recent hashes are rebuilt from the rows left
        return [row["id"] for row in rows]


@dataclass
class Offer:
    model: str
    version: str
    request_id: str
    data: bytes
    params: dict
    answer: dict
    signals: dict | None
    reasons: list[str]
    when: float


class Capturer:
    """Takes the decision on the request path and hands the rest to one worker task."""

    def __init__(
        self, policies: dict[str, CapturePolicy], store: CaptureStore, metrics, rng: random.Random | None = None
    ):
        self.policies = policies
        self.store = store
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.queue: asyncio.Queue[Offer] | None = None
        self.queued_bytes = 0
        self.worker: asyncio.Task | None = None
        self.last_sweep: dict[str, float] = {}
        self.confs: dict[tuple[str, str], float | None] = {}

    def start(self) -> None:
        if self.policies and self.worker is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._work())

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Store what is queued (bounded), then stop the worker."""
        if self.worker is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), timeout_s)
        except TimeoutError:
            logger.warning("captures still queued at shutdown were dropped: %d", self.queue.qsize())
        self.worker.cancel()
        self.worker = None

    async def default_conf(self, model: str, version: str, metadata) -> float | None:
        """The version's own conf (asked once of its handler) when near_threshold needs it and the policy has none."""
        policy = self.policies[model]
        if not policy.near_threshold or policy.conf is not None:
            return None
        if (model, version) not in self.confs:
            self.confs[(model, version)] = (await metadata(model, version)).get("conf")
        return self.confs[(model, version)]

    async def info(self, model: str) -> dict | None:
        """What ``GET /models/{name}`` shows: the policy and what it has kept (None: not captured)."""
        if model not in self.policies:
            return None
        try:
            held = await asyncio.to_thread(self.store.held, model)
            stored, size = len(held.shas), held.bytes
        except StateError as exc:
            logger.warning("captures of %s unreadable: %s", model, exc)
            stored = size = 0
        return {"policy": self.policies[model].model_dump(), "stored": stored, "bytes": size}

    def drop(self, model: str, cause: str) -> None:
        self.metrics.capture_dropped.labels(model, cause).inc()

    def offer(self, request_id: str, data: bytes, params: dict, answer: dict, signals: dict | None,
              conf: float | None, alarmed: bool) -> list[str]:  # fmt: skip
        """Decide for one successful answer; queue the capture when it is taken. The reasons (empty: not taken)."""
        model = answer["model"]["name"]
        policy = self.policies.get(model)
        if policy is None or self.queue is None:
            return []
        threshold = params.get("conf") or policy.conf or conf or DEFAULT_CONF
        why = reasons(policy, answer, threshold, alarmed, self.rng.random())
        if not why:
            return []
        now = time.time()
        cause = self.store.holdings[model].window.over(policy.caps, now) if model in self.store.holdings else None
        if cause is None and (self.queue.qsize() >= QUEUE_IMAGES or self.queued_bytes + len(data) > QUEUE_BYTES):
            cause = "queue_full"
        if cause:
            self.drop(model, cause)
            return []
        self.queued_bytes += len(data)
        version = answer["model"]["version"]
        self.queue.put_nowait(Offer(model, version, request_id, data, params, answer, signals, why, now))
        return why

    async def _work(self) -> None:
        while True:
            try:
                offer = await asyncio.wait_for(self.queue.get(), SWEEP_EVERY_S)
            except TimeoutError:  # quiet traffic: the retention still applies
                await asyncio.to_thread(self.sweep_all)
                continue
            try:
                cause = await asyncio.to_thread(self._keep, offer)
                if cause:
                    self.drop(offer.model, cause)
                else:
                    self.metrics.captures.labels(offer.model).inc()
                    for reason in offer.reasons:
                        self.metrics.capture_reasons.labels(offer.model, reason.partition(":")[0]).inc()
            except Exception:  # noqa: BLE001 - a capture that fails is dropped and counted, never the worker
                logger.exception("capture of request %s failed", offer.request_id)
                self.drop(offer.model, "store_error")
            finally:
                self.queued_bytes -= len(offer.data)
                self.queue.task_done()

    def _keep(self, offer: Offer) -> str | None:
        """Store one capture (on a thread); the cause when it is dropped instead."""
        import hashlib

        policy, store = self.policies[offer.model], self.store
        try:
            held = store.held(offer.model)
            cause = held.window.over(policy.caps, offer.when)
            if cause:
                return cause
            sha = hashlib.sha256(offer.data).hexdigest()
            if sha in held.shas:
                return "duplicate"
            fingerprint = phash(offer.data)
            if policy.near_duplicate.distance and store.near_duplicate(offer.model, policy, fingerprint, offer.when):
                return "near_duplicate"
            if policy.quota_mb is not None and held.bytes + len(offer.data) > policy.quota_mb * 1e6:
                return "quota"
            store.directory.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(store.directory).free < len(offer.data) + DISK_RESERVE:
                return "disk_full"
            row = self._row(offer, sha, fingerprint)
            store.add(row, offer.data)
            if offer.when - self.last_sweep.get(offer.model, 0.0) >= SWEEP_EVERY_S:
                self.sweep(offer.model, offer.when)
            self.metrics.capture_bytes.labels(offer.model).set(store.held(offer.model).bytes)
        except OSError as exc:
            logger.warning("capture of request %s not stored: %s", offer.request_id, exc)
            return "disk_full" if exc.errno == 28 else "store_error"
        except StateError as exc:
            logger.warning("capture of request %s not stored: %s", offer.request_id, exc)
            return "store_error"
        return None

    def sweep(self, model: str, now: float) -> None:
        self.last_sweep[model] = now
        purged = self.store.sweep(model, self.policies[model], now)
        if purged:
            logger.info("capture retention of %s purged %d captures", model, len(purged))
        self.metrics.capture_bytes.labels(model).set(self.store.held(model).bytes)

    def sweep_all(self) -> None:
        for model in self.policies:
            try:
                self.sweep(model, time.time())
            except (OSError, StateError) as exc:
                logger.warning("capture retention of %s not applied: %s", model, exc)

    @staticmethod
    def _row(offer: Offer, sha: str, fingerprint: int) -> dict:
        answer = {key: value for key, value in offer.answer.items() if key != "timing_ms"}
        return {
            "id": f"{int(offer.when * 1e6):013x}{uuid.uuid4().hex[:3]}",  # time-ordered to the microsecond
            "request_id": offer.request_id,
            "model": offer.model,
            "version": offer.version,
            "sha256": sha,
            "size": len(offer.data),
            "media_type": media_type(offer.data),
            "width": answer["image"]["width"],
            "height": answer["image"]["height"],
            "params": offer.params,
            "answer": answer,
            "signals": offer.signals,
            "reasons": offer.reasons,
            "time": offer.when,
            "when": datetime.fromtimestamp(offer.when, UTC).isoformat(timespec="seconds"),
            "phash": f"{fingerprint:016x}",
        }
