"""Capture store: the kept images on disk and their manifest rows in the state store.

The bytes are kept as uploaded, content-addressed (``<dir>/<model>/blobs/<sha[:2]>/<sha256>``, mode 0600);
one manifest row per capture goes into the state store (``capture/<model>/<id>``). What a model's captures
hold (bytes, hashes, the caps' window, the recent perceptual hashes) is kept in memory beside the rows,
for the quota, the dedupe and the near-duplicate check; retention and purge delete rows and bytes together.
"""

from __future__ import annotations

import io
import os
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from gateway.capture.policy import CapturePolicy, Window
from gateway.state import StateStore
from serving.yolo_files import MEDIA_TYPES

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
    """How many of two perceptual hashes' 64 bits differ (small: the same picture, near enough)."""
    return (a ^ b).bit_count()


def media_type(data: bytes) -> str:
    """The media type a capture's row records for its bytes (``serving.yolo_files.MEDIA_TYPES``)."""
    with Image.open(io.BytesIO(data)) as image:
        return MEDIA_TYPES.get(image.format or "", "application/octet-stream")


def capture_key(model: str, capture_id: str = "") -> str:
    """A capture's row in the state store; without an id, the prefix of all of a model's rows."""
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
