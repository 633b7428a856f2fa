"""When a retraining runs without a person: a sustained drift alarm with enough new labels, or a schedule.

A trigger policy (YAML, one section per model)::

    yolo:
      drift_sustained_min: 30   # the default version's drift alarm has stood this long (not reset) ...
      min_new_labels: 200       # ... and this many captures were labelled since the last retraining
      every_hours: 168          # or this long since the last retraining, with at least one new label

``due`` says whether (and why) a model is due; ``watch`` checks every ``interval_s`` and runs
``retraining.pipeline.retrain`` when it is, one model at a time. The last retraining's time is
read from the deploy history (its ``retrain`` entries), so a restarted watcher does not run twice.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.capture.policy import per_model
from operations.history import read_history
from operations.stack import Stack, current_version
from retraining.datasets.layout import labelled_ids


class TriggerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drift_sustained_min: float | None = Field(None, gt=0, description="minutes the drift alarm has stood")
    min_new_labels: int = Field(1, ge=1, description="captures labelled since the last retraining")
    every_hours: float | None = Field(None, gt=0, description="hours between scheduled retrainings")


def load_triggers(path: Path) -> dict[str, TriggerPolicy]:
    """The policies by model; ValueError naming the file and the key that is wrong."""
    return per_model(path, TriggerPolicy, "trigger policy")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def last_retrain(history: list[dict]) -> float | None:
    times = [_epoch(e["when"]) for e in history if e.get("action") == "retrain"]
    return max(times) if times else None


def new_labels(dataset: Path, since: float | None) -> int:
    return sum(1 for entry in labelled_ids(dataset).values() if since is None or _epoch(entry["when"]) > since)


def due(policy: TriggerPolicy, drift: dict | None, labels: int, last: float | None, now: float) -> str | None:
    """The reason a retraining is due now, or None. ``drift``: the default version's entry of GET .../drift."""
    if policy.drift_sustained_min is not None and drift and drift.get("alarms") and labels >= policy.min_new_labels:
        first = min(_epoch(a["time"]) for a in drift["alarms"])
        if now - first >= policy.drift_sustained_min * 60:
            minutes = (now - first) / 60
            return f"drift alarm ({drift['state']}) standing {minutes:.0f} min, {labels} new labels"
    if policy.every_hours is not None and labels >= 1 and (last is None or now - last >= policy.every_hours * 3600):
        return f"schedule: every {policy.every_hours:g} h, {labels} new labels"
    return None


def default_drift(stack: Stack, model: str) -> dict | None:
    version = current_version(stack, model)
    try:
        report = httpx.get(f"{stack.gateway_url}/models/{model}/drift", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None
    return next((v for v in report.get("versions", []) if v["version"] == version), None)


def check(stack: Stack, policy: TriggerPolicy, dataset: Path, now: float | None = None) -> str | None:
    """Whether ``stack``'s model is due (the reason), from its gateway, its labels and its history."""
    last = last_retrain(read_history(stack))
    return due(policy, default_drift(stack, stack.model_name), new_labels(dataset, last), last, now or time.time())


def watch(stacks: dict[str, Stack], policies: dict[str, TriggerPolicy], datasets: dict[str, Path], retrain_one,
          interval_s: float = 60, once: bool = False, out=print) -> list:  # fmt: skip
    """Check each model every ``interval_s``; run ``retrain_one(stack, reason)`` for the due ones. The outcomes."""
    outcomes = []
    while True:
        for model, policy in policies.items():
            reason = check(stacks[model], policy, datasets[model])
            if reason:
                out(f"{model}: retraining is due: {reason}")
                outcomes.append(retrain_one(stacks[model], reason))
        if once:
            return outcomes
        time.sleep(interval_s)
