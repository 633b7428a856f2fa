"""Deploy, canary, promote and roll back model versions on a running TorchServe, dropping no request.

Each model (``--model``) has its own versions, gate, canary, history and cold-start pointer,
and nothing here touches another model. Everything goes through the management API: the
candidate is registered next to the
serving version, smoke-checked and gated on the labelled set its own archive carries
(``package_mar.sh --gate-data``) through ``/predictions/<name>/<version>``, then made the
default with ``set-default``, which TorchServe switches atomically, so
requests in flight finish on the version they started on. The previous version stays
loaded for an instant rollback. The cold-start pointer (``<name>_current.mar``) follows
every switch, so a restarted TorchServe comes back on the version last chosen, and each
action is appended to the model's deploy history (``operations.history``, in the state store).

A canary is a candidate that is registered and gated but not made the default: the
gateway sends ``percent`` % of unpinned ``/predict`` traffic to it, reading the canary this
code writes to the same state store.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.canary import Canary
from gateway.torchserve import BlockingTorchServe, TorchServeError, handler_answer, torchserve_message
from operations.archives import DeployError, archive_for, check_archive, extract_gate_set
from operations.history import SWITCHES, previous_version, read_canary, read_history, record, write_canary
from operations.packaging import sha256sum
from operations.stack import Stack, set_current, wait_until
from quality.gate import quality_gate, smoke_check
from serving.yolo_contract import VERSION_RE, error_body, version_order

DEFAULT_KEEP = int(os.environ.get("DEPLOY_KEEP", "1"))
DEFAULT_DRAIN_S = float(os.environ.get("DEPLOY_DRAIN_S", "3"))


class Release:
    """One model of one stack, and the TorchServe client a release drives it with."""

    def __init__(self, stack: Stack, ts: BlockingTorchServe):
        self.stack, self.ts, self.model = stack, ts, stack.model_name

    def answer(self, version: str, image: bytes) -> dict:
        """The handler's answer from ``version`` alone (an error answer when TorchServe's own error came back)."""
        response = self.ts.predict(self.model, version, image, {"Content-Type": "application/octet-stream"})
        answer = handler_answer(response)
        if answer is not None:
            return answer
        message = torchserve_message(response)
        return error_body(f"http_{response.status_code}", message)


@contextmanager
def releasing(stack: Stack) -> Iterator[Release]:
    with stack.torchserve(timeout=60) as ts:
        try:
            yield Release(stack, ts)
        except TorchServeError as exc:
            raise DeployError(f"TorchServe, for {stack.run_dir}: {exc.message}") from exc


def load_version(stack: Stack, ts: BlockingTorchServe, version: str, timeout: float = 180) -> None:
    """Register ``version``'s archive and return once one of its workers is READY.

    Registration is asynchronous (``BlockingTorchServe.register``). While a version loads,
    describe shows every worker as UNLOADING whether it is loading or failing; a worker process
    that dies is restarted with a new pid, so a pid that changes before any worker is READY
    means the archive does not load.
    """
    model = stack.model_name
    ts.register(archive_for(stack, version).name, model)
    pids: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = ts.workers(model, version)
        if any(w.get("status") == "READY" for w in workers):
            return
        for worker in workers:
            pid, known = worker.get("pid", -1), pids.get(worker.get("id"))
            if pid > 0 and known and pid != known:
                ts.unregister(model, version)
                raise DeployError(
                    f"TorchServe refused to load {version}: its worker died while loading the model and was "
                    "restarted (the model log, logs/torchserve/model_log.log, says why)"
                )
            if pid > 0:
                pids[worker.get("id")] = pid
        time.sleep(0.5)
    ts.unregister(model, version)
    raise DeployError(f"TorchServe did not get a worker of {version} ready in {timeout:.0f}s")


def _serving(r: Release) -> str:
    current = r.ts.default_version(r.model)
    if current is None:
        raise DeployError(f"model {r.model!r} is not registered in TorchServe; start the stack first")
    return current


def _check_version(version: str) -> None:
    if not VERSION_RE.match(version):
        raise DeployError(f"version must look like 1.0 or 2.1.3, got {version!r}")


def _load_and_gate(r: Release, version: str, previous: str | None, action: str, out, gate: bool = True) -> dict:
    """Load ``version`` unless it is, smoke-check and gate it; on failure unload what this call loaded.

    Returns what the history records of the gate. An archive without a gate set is refused
    unless ``gate`` is off (``--no-gate``), which the history records as ungated.
    """
    stack = r.stack
    loaded_now = version not in r.ts.loaded_versions(r.model)
    try:
        archive = check_archive(stack, version)
        with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
            gate_dir = extract_gate_set(archive, Path(tmp))
            if gate and gate_dir is None:
                raise DeployError(
                    f"{archive.name} carries no gate set (package it with --gate-data DIR), "
                    "or deploy it ungated with --no-gate"
                )
            if loaded_now:
                beside = f"next to {previous}" if previous else f"as the first version of {stack.model_name!r}"
                out(f"registering {archive.name} (sha256 {sha256sum(archive)[:12]}) {beside} ...")
                load_version(stack, r.ts, version)
            else:
                wait_until(lambda: r.ts.ready_workers(r.model, version) > 0, f"workers of {version}", 120)
            problems = smoke_check(lambda image: r.answer(version, image), version)
            if problems:
                raise DeployError(f"{version} failed the smoke check:\n  " + "\n  ".join(problems))
            if not gate:
                out(f"{version}: smoke check passed; NOT gated (--no-gate)")
                return {"gated": False}
            out(f"{version}: worker ready; quality gate on the archive's own gate set ...")
            result, problems = quality_gate(lambda image: r.answer(version, image), version, gate_dir)
        if problems:
            raise DeployError(f"{version} failed the quality gate:\n  " + "\n  ".join(problems))
    except (DeployError, TorchServeError, TimeoutError) as exc:
        if loaded_now and version in r.ts.loaded_versions(r.model):
            r.ts.unregister(r.model, version)
        record(stack, "refused", version, previous, result="refused", attempted=action, reason=str(exc))
        kept = f"{previous} keeps serving" if previous else f"{stack.model_name!r} is not served"
        raise DeployError(f"refused {version}; {kept}. {exc}") from exc
    out(f"{version}: quality gate passed ({result['metric']} {result['value']} >= {result['threshold']})")
    return {"gated": True, "gate": result}


def _switch(r: Release, version: str, previous: str, action: str, keep: int, drain_s: float, out, gated: dict) -> None:
    """Make ``version`` the default, move the cold-start pointer, record it, unload what is past ``keep``."""
    r.ts.set_default(r.model, version)
    set_current(r.stack, version)
    record(r.stack, action, version, previous, **gated)
    out(f"{version} is now the default (was {previous}); cold start loads {archive_for(r.stack, version).name}")
    unload_extras(r, version, keep, drain_s, out)


def unload_extras(r: Release, current: str, keep: int, drain_s: float, out) -> None:
    """Keep the ``keep`` versions that served most recently (besides the default) and unload the rest."""
    canary = read_canary(r.stack)
    served: dict[str, int] = {}
    for at, entry in enumerate(read_history(r.stack)):
        if entry["result"] == "ok" and entry["action"] in SWITCHES:
            if entry["previous"]:
                served[entry["previous"]] = at
            served[entry["version"]] = at + 1
    others = [v for v in r.ts.loaded_versions(r.model) if v != current and not (canary and canary.version == v)]
    others.sort(key=lambda v: (served.get(v, -1), version_order(v)), reverse=True)
    stale = others[keep:]
    if stale:
        time.sleep(drain_s)  # requests routed to them just before the switch finish first
    for version in stale:
        r.ts.unregister(r.model, version)
        out(f"unloaded {version} (keeping {keep} previous version{'s' if keep != 1 else ''} loaded)")


def deploy(
    stack: Stack,
    version: str,
    keep: int = DEFAULT_KEEP,
    drain_s: float = DEFAULT_DRAIN_S,
    out=print,
    gate: bool = True,
) -> str:
    """Gate ``version`` and make it the default; a no-op when it already is.

    A model TorchServe does not serve yet gets ``version`` as its first: loaded, gated, and
    given a cold-start pointer, so ``make up`` serves it from then on.
    """
    _check_version(version)
    with releasing(stack) as r:
        current = r.ts.default_version(r.model)
        if current is None:
            return _first_deploy(r, version, out, gate)
        canary = read_canary(stack)
        if canary and canary.version != version:
            raise DeployError(f"a canary of {canary.version} is running; promote it or abort it with rollback.sh first")
        if current == version and canary is None:
            set_current(stack, version)
            out(f"{version} is already the default; nothing to do")
            return version
        gated = _load_and_gate(r, version, current, "deploy", out, gate)
        _switch(r, version, current, "deploy", keep, drain_s, out, gated)
        write_canary(stack, None)
        return version


def _first_deploy(r: Release, version: str, out, gate: bool) -> str:
    stack = r.stack
    gated = _load_and_gate(r, version, None, "deploy", out, gate)
    set_current(stack, version)
    record(stack, "deploy", version, None, **gated)
    out(
        f"{stack.model_name} {version} is served at /models/{stack.model_name}/predict; "
        f"cold start loads {archive_for(stack, version).name}"
    )
    return version


def start_canary(
    stack: Stack,
    version: str,
    percent: float,
    keep: int = DEFAULT_KEEP,
    drain_s: float = DEFAULT_DRAIN_S,
    out=print,
    gate: bool = True,
) -> Canary:
    """Load and gate ``version`` without promoting it, then let the gateway send it ``percent`` % of traffic."""
    _check_version(version)
    if not 0 < percent < 100:
        raise DeployError(f"canary percent must be between 0 and 100 (exclusive), got {percent}")
    with releasing(stack) as r:
        current = _serving(r)
        if version == current:
            raise DeployError(f"{version} is already the default; a canary needs a new version")
        running = read_canary(stack)
        if running and running.version != version:
            raise DeployError(
                f"a canary of {running.version} is running; promote it or abort it with rollback.sh first"
            )
        wanted = Canary(version, float(percent))
        if running == wanted:
            out(f"canary of {version} at {percent:g}% is already running; nothing to do")
            return wanted
        gated = _load_and_gate(r, version, current, "canary", out, gate) if running is None else {}
        write_canary(stack, wanted)
        record(stack, "canary", version, current, percent=wanted.percent, **gated)
        out(f"canary: {percent:g}% of /predict traffic goes to {version}, the rest to {current}")
        out(f"finish with: scripts/deploy.sh {version} --promote   abort with: scripts/rollback.sh")
        return wanted


def promote(stack: Stack, version: str, keep: int = DEFAULT_KEEP, drain_s: float = DEFAULT_DRAIN_S, out=print) -> str:
    """Finish a canary: its version becomes the default and the gateway stops splitting traffic."""
    with releasing(stack) as r:
        current = _serving(r)
        canary = read_canary(stack)
        if canary is None or canary.version != version:
            if current == version:
                out(f"{version} is already the default; nothing to do")
                return version
            running = f"the running canary is {canary.version}" if canary else "no canary is running"
            raise DeployError(
                f"cannot promote {version}: {running} (start one with deploy.sh {version} --canary PERCENT)"
            )
        r.ts.set_default(r.model, version)
        write_canary(stack, None)
        set_current(stack, version)
        record(stack, "promote", version, current, percent=canary.percent)
        out(f"{version} promoted to default (was {current}); cold start loads {archive_for(stack, version).name}")
        unload_extras(r, version, keep, drain_s, out)
        return version


def rollback(
    stack: Stack,
    version: str | None = None,
    keep: int = DEFAULT_KEEP,
    drain_s: float = DEFAULT_DRAIN_S,
    out=print,
    gate: bool = True,
) -> str:
    """Abort a running canary, or go back to ``version`` (default: the version served before this one)."""
    with releasing(stack) as r:
        current = _serving(r)
        canary = read_canary(stack)
        if canary:
            write_canary(stack, None)
            time.sleep(drain_s)  # let requests already sent to the candidate finish
            if canary.version != current:
                r.ts.unregister(r.model, canary.version)
            record(stack, "rollback", current, current, aborted_canary=canary.version)
            out(f"canary of {canary.version} aborted and unloaded; all traffic on {current}")
            if version is None or version == current:
                return current
        if version is None:
            version = previous_version(read_history(stack), current)
            if version is None:
                raise DeployError(
                    f"nothing to roll back to: the deploy history has no version before {current}; "
                    "name one: rollback.sh VERSION"
                )
        _check_version(version)
        if version == current:
            set_current(stack, version)
            out(f"{version} is already the default; nothing to do")
            return version
        if version in r.ts.loaded_versions(r.model):
            out(f"{version} is still loaded: switching instantly")
            gated = {}
        else:
            gated = _load_and_gate(r, version, current, "rollback", out, gate)
        _switch(r, version, current, "rollback", keep, drain_s, out, gated)
        return version
