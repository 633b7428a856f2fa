"""Capture worker: takes a policy's decision on the request path and stores the capture off it.

Off by default (``gateway.capture.policy``). Everything after the decision (hashing, the near-duplicate
check, the disk, the state store) runs on one worker task off the request path, behind a bounded queue. A
full queue, a cap, the quota, a full disk or a failing store drops the capture and counts it in
``gateway_capture_dropped_total``; the answer is never delayed or failed by it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.capture.policy import CapturePolicy, reasons
from gateway.capture.store import CaptureStore, media_type, phash
from gateway.state import StateError

logger = logging.getLogger(__name__)
QUEUE_IMAGES = 64  # captures waiting for the worker; past it they are dropped (queue_full)
QUEUE_BYTES = 64 * 1024 * 1024
DISK_RESERVE = 256 * 1024 * 1024  # free space the captures never take
SWEEP_EVERY_S = 60.0
DEFAULT_CONF = 0.25  # the handler's default, for archives that do not report theirs


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
