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
action is appended to ``<run_dir>/models/<name>/deploy_history.jsonl``.

A canary is a candidate that is registered and gated but not made the default: the
gateway sends ``percent`` % of unpinned ``/predict`` traffic to it, reading
``<run_dir>/models/<name>/canary.json`` (written here, atomically).
"""

from __future__ import annotations

import argparse
import getpass
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from gateway.canary import CANARY_FILE, Canary
from scripts.gate_metrics import gate_spec, load_gate_set, score
from scripts.package_mar import GATE_DIR, VERSION_RE, sha256sum
from scripts.stack import Stack, ready_workers, set_current, wait_until
from scripts.torchserve import TorchServe, TorchServeError

DEFAULT_KEEP = int(os.environ.get("DEPLOY_KEEP", "1"))
DEFAULT_DRAIN_S = float(os.environ.get("DEPLOY_DRAIN_S", "3"))
SWITCHES = ("deploy", "promote", "rollback")  # history actions that change the default version


class DeployError(Exception):
    """A refusal or failure to report to the operator as one clear line; nothing serving was changed."""


def history_path(stack: Stack) -> Path:
    """The model's own deploy history: each model is deployed and rolled back on its own."""
    return stack.state_dir / stack.model_name / "deploy_history.jsonl"


def canary_path(stack: Stack) -> Path:
    """Where the gateway (``GATEWAY_CANARY_DIR``, see ``gateway.canary.Canaries``) reads the model's canary."""
    return stack.state_dir / stack.model_name / CANARY_FILE


def archive_for(stack: Stack, version: str) -> Path:
    return stack.model_store / f"{stack.model_name}_v{version}.mar"


class Management:
    """What a deploy asks of TorchServe about one model, through the shared client (``scripts.torchserve``)."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.ts = TorchServe(stack, timeout=60)

    def __enter__(self) -> Management:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.ts.close()

    def call(self, method: str, suffix: str = "", **kwargs) -> httpx.Response:
        try:
            return self.ts.management(method, self.stack.model_name, suffix, **kwargs)
        except TorchServeError as exc:
            raise DeployError(f"TorchServe does not answer for {self.stack.run_dir}: {exc}") from exc

    def default_version(self) -> str | None:
        response = self.call("GET")
        return response.json()[0]["modelVersion"] if response.status_code == 200 else None

    def loaded_versions(self) -> list[str]:
        response = self.call("GET", "/all")
        return [entry["modelVersion"] for entry in response.json()] if response.status_code == 200 else []

    def register(self, version: str, timeout: float = 180) -> None:
        """Register the archive and return once one of its workers is READY.

        Registration is asynchronous on purpose: TorchServe's ``synchronous=true`` blocks the
        Netty thread that took the call until the workers are up, and that thread also carries
        inference connections, so a request sent at that moment stalled for the whole load
        (a 504 under load). While a version loads, describe shows every worker as UNLOADING
        whether it is loading or failing; a worker process that dies is restarted with a new pid,
        so a pid that changes before any worker is READY means the archive does not load.
        """
        try:
            response = self.ts.register(
                url=archive_for(self.stack, version).name, model_name=self.stack.model_name, synchronous="false"
            )
        except TorchServeError as exc:
            raise DeployError(f"TorchServe does not answer for {self.stack.run_dir}: {exc}") from exc
        if response.status_code not in (200, 202):
            raise DeployError(f"TorchServe refused to load {version}: {_message(response)}")
        pids: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.workers(version)
            if any(w.get("status") == "READY" for w in workers):
                return
            for worker in workers:
                pid, known = worker.get("pid", -1), pids.get(worker.get("id"))
                if pid > 0 and known and pid != known:
                    self.unregister(version)
                    raise DeployError(
                        f"TorchServe refused to load {version}: its worker died while loading the model and was "
                        "restarted (the model log, logs/torchserve/model_log.log, says why)"
                    )
                if pid > 0:
                    pids[worker.get("id")] = pid
            time.sleep(0.5)
        self.unregister(version)
        raise DeployError(f"TorchServe did not get a worker of {version} ready in {timeout:.0f}s")

    def workers(self, version: str) -> list[dict]:
        response = self.call("GET", f"/{version}")
        return response.json()[0].get("workers", []) if response.status_code == 200 else []

    def set_default(self, version: str) -> None:
        response = self.call("PUT", f"/{version}/set-default")
        if response.status_code != 200:
            raise DeployError(f"TorchServe refused to make {version} the default: {_message(response)}")

    def unregister(self, version: str) -> None:
        response = self.call("DELETE", f"/{version}", timeout=120)
        if response.status_code not in (200, 404):
            raise DeployError(f"TorchServe refused to unload {version}: {_message(response)}")

    def predict(self, version: str, image: bytes) -> httpx.Response:
        try:
            return self.ts.predict(self.stack.model_name, version, image)
        except TorchServeError as exc:
            raise DeployError(f"TorchServe does not answer for {self.stack.run_dir}: {exc}") from exc


def _message(response: httpx.Response) -> str:
    try:
        return response.json().get("message", response.text)
    except ValueError:
        return response.text[:300]


def check_archive(stack: Stack, version: str) -> Path:
    """Refuse a missing, non-.mar or mislabelled archive before TorchServe sees it."""
    archive = archive_for(stack, version)
    if not archive.is_file():
        raise DeployError(f"no archive {archive}; build it with scripts/package_mar.sh --version {version}")
    try:
        with zipfile.ZipFile(archive) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DeployError(f"{archive} is not a TorchServe archive ({exc.__class__.__name__}: {exc})") from exc
    found = (manifest.get("modelName"), manifest.get("modelVersion"))
    if found != (stack.model_name, version):
        raise DeployError(f"{archive} holds {found[0]} v{found[1]}, not {stack.model_name} v{version}")
    return archive


def contract_problems(body: dict, version: str, width: int, height: int) -> list[str]:
    """What is wrong with an answer's shape, whatever the model's task: empty when it keeps the contract."""
    if body.get("status") != "success":
        return [f"status {body.get('status')!r}: {body.get('error')}"]
    problems = []
    if body.get("model", {}).get("version") != version:
        problems.append(f"answered as version {body.get('model')}")
    if body.get("image") != {"width": width, "height": height}:
        problems.append(f"image size {body.get('image')} instead of {width}x{height}")
    if body.get("task") == "classify":
        ranked = body.get("classifications")
        if not ranked or not all(0 <= c["confidence"] <= 1 for c in ranked):
            problems.append(f"classifications missing or out of range: {ranked}")
        return problems
    if not isinstance(body.get("detections"), list):
        problems.append(f"a {body.get('task')!r} answer without a detections list")
    for d in body.get("detections") or []:
        x1, y1, x2, y2 = d["bbox"]
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height and 0 <= d["confidence"] <= 1):
            problems.append(f"detection out of bounds: {d}")
    return problems


def _answer(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("status") in ("success", "error"):
        return body
    return {"status": "error", "error": {"code": f"http_{response.status_code}", "message": _message(response)}}


def smoke_check(ts: Management, version: str) -> list[str]:
    """Every version, gated or not, must answer a synthetic image with the contract's shape."""
    width, height = 333, 250  # odd sizes: the letterbox and the way back both have to be right
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    response = ts.predict(version, buffer.getvalue())
    return [f"smoke check: {p}" for p in contract_problems(_answer(response), version, width, height)]


def archive_gate(archive: Path, dest: Path) -> Path | None:
    """Unpack the gate set an archive carries into ``dest``; None when it carries none."""
    with zipfile.ZipFile(archive) as mar:
        members = [m for m in mar.namelist() if m.startswith(f"{GATE_DIR}/")]
        if not members:
            return None
        mar.extractall(dest, members)
    return dest / GATE_DIR


def quality_gate(ts: Management, version: str, gate_dir: Path) -> tuple[dict, list[str]]:
    """Score ``version`` alone on its gate set with the task's metric; problems when it falls short."""
    spec = gate_spec(gate_dir)
    task, items = load_gate_set(gate_dir)
    answers, problems = [], []
    for item in items:
        answer = _answer(ts.predict(version, item["image"].read_bytes()))
        problems += [
            f"{item['image'].name}: {p}" for p in contract_problems(answer, version, item["width"], item["height"])
        ]
        answers.append(answer)
    value = score(task, items, answers)
    result = {"task": task, "metric": spec.get("metric"), "value": round(value, 4), "threshold": spec["threshold"]}
    if value < float(spec["threshold"]):
        problems.append(f"{spec.get('metric', 'score')} {value:.3f} on {len(items)} gate images < {spec['threshold']}")
    return result, problems


def read_history(stack: Stack) -> list[dict]:
    path = history_path(stack)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(stack: Stack, action: str, version: str, previous: str | None, result: str = "ok", **extra) -> dict:
    archive = archive_for(stack, version)
    entry = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": getpass.getuser(),
        "action": action,
        "version": version,
        "previous": previous,
        "sha256": sha256sum(archive) if archive.is_file() else None,
        "result": result,
        **extra,
    }
    history_path(stack).parent.mkdir(parents=True, exist_ok=True)
    with history_path(stack).open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return entry


def lineage(history: list[dict]) -> list[str]:
    """The versions that served one after another; a rollback goes back down this chain."""
    chain: list[str] = []
    for entry in history:
        if entry["result"] != "ok" or entry["action"] not in SWITCHES:
            continue
        if entry["action"] == "rollback" and entry["version"] in chain:
            del chain[len(chain) - chain[::-1].index(entry["version"]) :]
            continue
        if not chain and entry["previous"]:
            chain.append(entry["previous"])
        chain.append(entry["version"])
    return chain


def previous_version(history: list[dict], current: str) -> str | None:
    chain = lineage(history)
    if current not in chain:
        return None
    at = len(chain) - 1 - chain[::-1].index(current)
    return chain[at - 1] if at else None


def read_canary(stack: Stack) -> Canary | None:
    try:
        data = json.loads(canary_path(stack).read_text())
    except FileNotFoundError:
        return None
    return Canary(str(data["version"]), float(data["percent"]))


def write_canary(stack: Stack, canary: Canary | None) -> None:
    """Replace the canary file in one rename, so the gateway never reads half of it."""
    path = canary_path(stack)
    if canary is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": canary.version, "percent": canary.percent}))
    os.replace(tmp, path)


def _serving(ts: Management) -> str:
    current = ts.default_version()
    if current is None:
        raise DeployError(f"model {ts.stack.model_name!r} is not registered in TorchServe; start the stack first")
    return current


def _check_version(version: str) -> None:
    if not VERSION_RE.match(version):
        raise DeployError(f"version must look like 1.0 or 2.1.3, got {version!r}")


def _load_and_gate(ts: Management, version: str, previous: str | None, action: str, out, gate: bool = True) -> dict:
    """Load ``version`` unless it is, smoke-check and gate it; on failure unload what this call loaded.

    Returns what the history records of the gate. An archive without a gate set is refused
    unless ``gate`` is off (``--no-gate``), which the history records as ungated.
    """
    stack = ts.stack
    loaded_now = version not in ts.loaded_versions()
    try:
        archive = check_archive(stack, version)
        with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
            gate_dir = archive_gate(archive, Path(tmp))
            if gate and gate_dir is None:
                raise DeployError(
                    f"{archive.name} carries no gate set (package it with --gate-data DIR), "
                    "or deploy it ungated with --no-gate"
                )
            if loaded_now:
                beside = f"next to {previous}" if previous else f"as the first version of {stack.model_name!r}"
                out(f"registering {archive.name} (sha256 {sha256sum(archive)[:12]}) {beside} ...")
                ts.register(version)
            else:
                wait_until(lambda: ready_workers(stack, version) > 0, f"workers of {version}", 120)
            problems = smoke_check(ts, version)
            if problems:
                raise DeployError(f"{version} failed the smoke check:\n  " + "\n  ".join(problems))
            if not gate:
                out(f"{version}: smoke check passed; NOT gated (--no-gate)")
                return {"gated": False}
            out(f"{version}: worker ready; quality gate on the archive's own gate set ...")
            result, problems = quality_gate(ts, version, gate_dir)
        if problems:
            raise DeployError(f"{version} failed the quality gate:\n  " + "\n  ".join(problems))
    except (DeployError, TimeoutError) as exc:
        if loaded_now and version in ts.loaded_versions():
            ts.unregister(version)
        record(stack, "refused", version, previous, result="refused", attempted=action, reason=str(exc))
        kept = f"{previous} keeps serving" if previous else f"{stack.model_name!r} is not served"
        raise DeployError(f"refused {version}; {kept}. {exc}") from exc
    out(f"{version}: quality gate passed ({result['metric']} {result['value']} >= {result['threshold']})")
    return {"gated": True, "gate": result}


def _switch(
    ts: Management, version: str, previous: str, action: str, keep: int, drain_s: float, out, gated: dict
) -> None:
    """Make ``version`` the default, move the cold-start pointer, record it, unload what is past ``keep``."""
    ts.set_default(version)
    set_current(ts.stack, version)
    record(ts.stack, action, version, previous, **gated)
    out(f"{version} is now the default (was {previous}); cold start loads {archive_for(ts.stack, version).name}")
    unload_extras(ts, version, keep, drain_s, out)


def unload_extras(ts: Management, current: str, keep: int, drain_s: float, out) -> None:
    """Keep the ``keep`` versions that served most recently (besides the default) and unload the rest."""
    canary = read_canary(ts.stack)
    served: dict[str, int] = {}
    for at, entry in enumerate(read_history(ts.stack)):
        if entry["result"] == "ok" and entry["action"] in SWITCHES:
            if entry["previous"]:
                served[entry["previous"]] = at
            served[entry["version"]] = at + 1
    others = [v for v in ts.loaded_versions() if v != current and not (canary and canary.version == v)]
    others.sort(key=lambda v: (served.get(v, -1), [int(p) for p in v.split(".")]), reverse=True)
    stale = others[keep:]
    if stale:
        time.sleep(drain_s)  # requests routed to them just before the switch finish first
    for version in stale:
        ts.unregister(version)
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
    with Management(stack) as ts:
        current = ts.default_version()
        if current is None:
            return _first_deploy(ts, version, out, gate)
        canary = read_canary(stack)
        if canary and canary.version != version:
            raise DeployError(f"a canary of {canary.version} is running; promote it or abort it with rollback.sh first")
        if current == version and canary is None:
            set_current(stack, version)
            out(f"{version} is already the default; nothing to do")
            return version
        gated = _load_and_gate(ts, version, current, "deploy", out, gate)
        _switch(ts, version, current, "deploy", keep, drain_s, out, gated)
        write_canary(stack, None)
        return version


def _first_deploy(ts: Management, version: str, out, gate: bool) -> str:
    stack = ts.stack
    gated = _load_and_gate(ts, version, None, "deploy", out, gate)
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
    with Management(stack) as ts:
        current = _serving(ts)
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
        gated = _load_and_gate(ts, version, current, "canary", out, gate) if running is None else {}
        write_canary(stack, wanted)
        record(stack, "canary", version, current, percent=wanted.percent, **gated)
        out(f"canary: {percent:g}% of /predict traffic goes to {version}, the rest to {current}")
        out(f"finish with: scripts/deploy.sh {version} --promote   abort with: scripts/rollback.sh")
        return wanted


def promote(stack: Stack, version: str, keep: int = DEFAULT_KEEP, drain_s: float = DEFAULT_DRAIN_S, out=print) -> str:
    """Finish a canary: its version becomes the default and the gateway stops splitting traffic."""
    with Management(stack) as ts:
        current = _serving(ts)
        canary = read_canary(stack)
        if canary is None or canary.version != version:
            if current == version:
                out(f"{version} is already the default; nothing to do")
                return version
            running = f"the running canary is {canary.version}" if canary else "no canary is running"
            raise DeployError(
                f"cannot promote {version}: {running} (start one with deploy.sh {version} --canary PERCENT)"
            )
        ts.set_default(version)
        write_canary(stack, None)
        set_current(stack, version)
        record(stack, "promote", version, current, percent=canary.percent)
        out(f"{version} promoted to default (was {current}); cold start loads {archive_for(stack, version).name}")
        unload_extras(ts, version, keep, drain_s, out)
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
    with Management(stack) as ts:
        current = _serving(ts)
        canary = read_canary(stack)
        if canary:
            write_canary(stack, None)
            time.sleep(drain_s)  # let requests already sent to the candidate finish
            if canary.version != current:
                ts.unregister(canary.version)
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
        if version in ts.loaded_versions():
            out(f"{version} is still loaded: switching instantly")
            gated = {}
        else:
            gated = _load_and_gate(ts, version, current, "rollback", out, gate)
        _switch(ts, version, current, "rollback", keep, drain_s, out, gated)
        return version


def print_history(stack: Stack, out=print) -> None:
    entries = read_history(stack)
    if not entries:
        out(f"no deployments recorded in {history_path(stack)}")
    for e in entries:
        extra = {k: v for k, v in e.items() if k not in ("when", "who", "action", "version", "previous", "sha256")}
        if isinstance(extra.get("gate"), dict):
            gate = extra["gate"]
            extra["gate"] = f"{gate['metric']}:{gate['value']}>={gate['threshold']}"
        if "reason" in extra:  # one line per entry; the file keeps the whole reason
            lines = extra["reason"].splitlines()
            extra["reason"] = lines[0].rstrip(":") + (f" ({len(lines) - 1} more lines)" if len(lines) > 1 else "")
        sha = (e["sha256"] or "-")[:12]
        detail = " ".join(f"{k}={v}" for k, v in extra.items() if k != "result")
        out(
            f"{e['when']}  {e['who']:<10} {e['action']:<8} {e['version']:<7} prev={e['previous']}  {sha}  "
            f"{e['result']}  {detail}".rstrip()
        )


def stack_from_env(args: argparse.Namespace) -> Stack:
    """The ``make up`` stack, or the one the options / STACK_* environment variables point at."""
    stack = Stack()
    overrides = {
        "model_name": args.model or stack.model_name,
        "run_dir": Path(args.run_dir) if args.run_dir else stack.run_dir,
        "model_store": Path(args.model_store) if args.model_store else stack.model_store,
        "inference_port": args.inference_port or stack.inference_port,
        "management_port": args.management_port or stack.management_port,
    }
    return Stack(**overrides)


def _stack_options() -> argparse.ArgumentParser:
    env = os.environ.get
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("stack (default: the `make up` stack)")
    group.add_argument("--model", default=env("STACK_MODEL_NAME"), help="model name [env STACK_MODEL_NAME] (yolo)")
    group.add_argument("--run-dir", default=env("STACK_RUN_DIR"), help="runtime dir [env STACK_RUN_DIR] (var/)")
    group.add_argument("--model-store", default=env("STACK_MODEL_STORE"), help="[env STACK_MODEL_STORE]")
    group.add_argument("--inference-port", type=int, default=env("STACK_INFERENCE_PORT"), help="(8085)")
    group.add_argument("--management-port", type=int, default=env("STACK_MANAGEMENT_PORT"), help="(8086)")
    tuning = parent.add_argument_group("switching")
    tuning.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="deploy an archive that carries no gate set (smoke check only); the history records it as ungated",
    )
    tuning.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help="previous versions kept loaded for instant rollback [env DEPLOY_KEEP] (%(default)s)",
    )
    tuning.add_argument(
        "--drain",
        type=float,
        default=DEFAULT_DRAIN_S,
        help="seconds given to in-flight requests before a version is unloaded [env DEPLOY_DRAIN_S] (%(default)s)",
    )
    return parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = _stack_options()
    parser = argparse.ArgumentParser(prog="scripts.deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dep = sub.add_parser(
        "deploy",
        prog="scripts/deploy.sh",
        parents=[common],
        help="deploy, canary or promote a version",
        description="Register VERSION's archive, gate it on the labelled set it carries, make it the default "
        "(or a canary), keep the previous version loaded and record it in the deploy history.",
    )
    dep.add_argument("version", help="version packaged as <model-store>/<model>_vVERSION.mar")
    mode = dep.add_mutually_exclusive_group()
    mode.add_argument("--canary", type=float, metavar="PERCENT", help="send PERCENT %% of /predict to it, no promote")
    mode.add_argument("--promote", action="store_true", help="finish the running canary of VERSION")
    back = sub.add_parser(
        "rollback",
        prog="scripts/rollback.sh",
        parents=[common],
        help="abort a canary or go back to a version",
        description="Abort a running canary, or make VERSION (default: the version served before the current "
        "one) the default again: instant when it is still loaded, re-registered from its archive when not.",
    )
    back.add_argument("version", nargs="?", help="version to go back to (default: the previous one)")
    sub.add_parser("history", parents=[common], help="print the deploy history")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = stack_from_env(args)
    options = {"keep": args.keep, "drain_s": args.drain, "gate": args.gate}
    try:
        if args.command == "history":
            print_history(stack)
            return 0
        if args.command == "rollback":
            rollback(stack, args.version, **options)
        elif args.promote:
            promote(stack, args.version, keep=args.keep, drain_s=args.drain)
        elif args.canary is not None:
            start_canary(stack, args.version, args.canary, **options)
        else:
            deploy(stack, args.version, **options)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
