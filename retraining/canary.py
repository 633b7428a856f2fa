"""Judge a running canary from what the gateway sees: the canary arm's drift state and its error rate.

The gateway counts each arm's answers (``gateway_predictions_total``) and TorchServe failures
(``gateway_prediction_errors_total``; the default arm's unpinned requests are labelled
``default``) and runs a drift watch per version (``GET /models/{model}/drift``). The canary
fails as soon as its drift state leaves ``ok`` or its error rate exceeds the default's by more
than the allowed excess (with at least ``MIN_ERRORS`` errors, so one failure is not a verdict),
and passes once it has answered ``min_requests`` without either; too little traffic in the time
allowed fails it too: a candidate is never promoted on no evidence.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

MIN_ERRORS = 3


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    canary_answers: int
    canary_errors: int
    default_answers: int
    default_errors: int
    drift_state: str
    waited_s: float

    def metrics(self) -> dict:
        return {
            "canary_answers": self.canary_answers,
            "canary_errors": self.canary_errors,
            "default_answers": self.default_answers,
            "default_errors": self.default_errors,
            "canary_wait_s": self.waited_s,
        }


def arm_counts(metrics_text: str, model: str) -> tuple[dict[str, float], dict[str, float]]:
    """(answers by version, errors by version label) of one model, from the gateway's /metrics text."""
    answers: dict[str, float] = defaultdict(float)
    errors: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "gateway_predictions_total":
                answers[sample.labels["model_version"]] += sample.value
            elif sample.name == "gateway_prediction_errors_total":
                errors[sample.labels["model_version"]] += sample.value
    return answers, errors


def drift_state(client: httpx.Client, gateway_url: str, model: str, version: str) -> tuple[str, list]:
    report = client.get(f"{gateway_url}/models/{model}/drift").json()
    for entry in report.get("versions", []):
        if entry["version"] == version:
            return entry["state"], entry["alarms"]
    return "unknown", []


def decide(
    counts: tuple[int, int, int, int],
    state: str,
    alarms: list,
    waited: float,
    min_requests: int,
    timeout_s: float,
    max_error_excess: float,
) -> Verdict | None:
    """The verdict on the counts so far (canary answers, canary errors, default answers, default errors), or None
    while there is not enough evidence either way."""
    c_ok, c_err, d_ok, d_err = counts

    def verdict(passed: bool, reason: str) -> Verdict:
        return Verdict(passed, reason, c_ok, c_err, d_ok, d_err, state, waited)

    c_rate, d_rate = c_err / max(c_ok + c_err, 1), d_err / max(d_ok + d_err, 1)
    if state in ("warning", "critical"):
        return verdict(
            False, f"the canary's drift state is {state} ({', '.join(sorted({a['signal'] for a in alarms}))})"
        )
    if c_err >= MIN_ERRORS and c_rate > d_rate + max_error_excess:
        return verdict(False, f"canary error rate {c_rate:.1%} > the default's {d_rate:.1%} + {max_error_excess:.0%}")
    if c_ok + c_err >= min_requests:
        return verdict(
            True, f"{c_ok + c_err} canary answers, error rate {c_rate:.1%} (default {d_rate:.1%}), drift {state}"
        )
    if waited >= timeout_s:
        return verdict(False, f"only {c_ok + c_err} canary answers in {timeout_s:g} s ({min_requests} needed)")
    return None


def watch_canary(
    gateway_url: str,
    model: str,
    canary: str,
    default: str,
    min_requests: int = 100,
    timeout_s: float = 600,
    max_error_excess: float = 0.01,
    poll_s: float = 2.0,
    out=print,
) -> Verdict:
    """Poll the gateway until the canary passes or fails; counts start at the call."""
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:

        def counts() -> tuple[float, float, float, float]:
            answers, errors = arm_counts(client.get(f"{gateway_url}/metrics").text, model)
            return answers[canary], errors[canary], answers[default], errors[default] + errors["default"]

        base = counts()
        last_said = 0.0
        while True:
            now = counts()
            c_ok, c_err, d_ok, d_err = (int(a - b) for a, b in zip(now, base, strict=True))
            state, alarms = drift_state(client, gateway_url, model, canary)
            waited = round(time.monotonic() - started, 1)

            found = decide((c_ok, c_err, d_ok, d_err), state, alarms, waited, min_requests, timeout_s, max_error_excess)
            if found is not None:
                return found
            if waited - last_said >= 15:
                last_said = waited
                out(f"  canary {canary}: {c_ok + c_err}/{min_requests} answers, {c_err} errors, drift {state}")
            time.sleep(poll_s)
