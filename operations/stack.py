"""Start, stop and inspect the local stack: TorchServe plus the FastAPI gateway, as processes.

`make up` / `make down` / `make status` / `make logs` call this; the tests import the same
functions to start a private stack on free ports. One TorchServe serves every model that has a
cold-start pointer (``<name>_current.mar``) in the model store, each on the version last
deployed; ``model_name`` is the one the gateway's ``/predict`` serves. Each process runs in its own session so
that stopping it stops everything it spawned (TorchServe's Java frontend and its Python
workers), and its PID is recorded so `down` never has to guess.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.torchserve import BlockingTorchServe, TorchServeError

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEFAULT_STORE = ROOT / "serving" / "model-store"
BASE_CONFIG = ROOT / "serving" / "config.properties"
CURRENT_SUFFIX = "_current.mar"


@dataclass
class Stack:
    """Where one stack instance lives: its ports, model store and runtime directory."""

    run_dir: Path = ROOT / "var"
    model_store: Path = DEFAULT_STORE
    model_name: str = "yolo"  # the default model, or the one a deploy works on
    host: str = "127.0.0.1"
    inference_port: int = 8085
    management_port: int = 8086
    metrics_port: int = 8082
    gateway_port: int = 8000
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    gateway_env: dict[str, str] = field(default_factory=dict)
    state_store: str | None = None  # SQLite file or redis:// URL; None: <run_dir>/state.db

    @property
    def ts_dir(self) -> Path:
        """TorchServe's working directory: its key_file.json and logs land here."""
        return self.run_dir / "torchserve"

    @property
    def key_file(self) -> Path:
        return self.ts_dir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    @property
    def inference_url(self) -> str:
        return self.url(self.inference_port)

    @property
    def management_url(self) -> str:
        return self.url(self.management_port)

    @property
    def metrics_url(self) -> str:
        return self.url(self.metrics_port)

    @property
    def gateway_url(self) -> str:
        return self.url(self.gateway_port)

    @classmethod
    def private(cls, run_dir: Path, model_store: Path, **overrides) -> Stack:
        """An instance on free ports, for tests, benchmarks and reports beside a running `make up`."""
        names = (
            "inference_port",
            "management_port",
            "metrics_port",
            "gateway_port",
            "grpc_inference_port",
            "grpc_management_port",
        )
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        return cls(run_dir=run_dir, model_store=model_store, **{**ports, **overrides})

    def pid_file(self, service: str) -> Path:
        return self.run_dir / f"{service}.pid"

    def current_archive(self, model: str | None = None) -> Path:
        """The pointer a cold start loads: a symlink to the deployed version's archive."""
        return self.model_store / f"{model or self.model_name}{CURRENT_SUFFIX}"

    @property
    def state_location(self) -> str:
        """The state store deploys write and the gateway reads (``operations.history``)."""
        return self.state_store or str(self.run_dir / "state.db")

    @property
    def capture_dir(self) -> Path:
        """Where the gateway keeps captured images (``GATEWAY_CAPTURE_DIR``) and the retraining reads them."""
        return Path(self.gateway_env.get("GATEWAY_CAPTURE_DIR") or self.run_dir / "captures")

    @property
    def state_dir(self) -> Path:
        """Where each model's history and canary files were kept before the state store (migrated from)."""
        return self.run_dir / "models"

    def torchserve(self, timeout: float = 60) -> BlockingTorchServe:
        """The TorchServe client on this stack (close it, or use ``with``)."""
        return BlockingTorchServe(self.inference_url, self.management_url, self.key_file, timeout)

    def served_models(self) -> list[str]:
        """Every model with a cold-start pointer in the model store: what TorchServe loads when it starts."""
        pointers = self.model_store.glob(f"*{CURRENT_SUFFIX}")
        return sorted(p.name[: -len(CURRENT_SUFFIX)] for p in pointers if p.is_symlink())


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports nothing listens on right now, for private stacks (tests, benchmarks, reports).

    Each is held until all are chosen: a port let go at once can be handed out again by the next ask, and a
    stack given one port twice (TorchServe's management and gRPC ports once) cannot start.
    """
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    """One TCP port nothing listens on right now (``free_ports``)."""
    return free_ports(1)[0]


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def render_ts_config(stack: Stack) -> Path:
    """Write this instance's config.properties: the committed defaults plus its paths and ports."""
    props = read_properties(BASE_CONFIG)
    store = stack.model_store.resolve()
    props.update(
        {
            "inference_address": stack.inference_url,
            "management_address": stack.management_url,
            "metrics_address": stack.metrics_url,
            "grpc_inference_port": str(stack.grpc_inference_port),
            "grpc_management_port": str(stack.grpc_management_port),
            "model_store": str(store),
            "allowed_urls": f"file://{store}/.*\\.mar",
        }
    )
    dest = stack.ts_dir / "config.properties"
    dest.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return dest


def set_current(stack: Stack, version: str) -> Path:
    """Atomically point the cold-start archive at ``version``'s archive."""
    target = f"{stack.model_name}_v{version}.mar"
    if not (stack.model_store / target).is_file():
        raise FileNotFoundError(f"archive {stack.model_store / target} does not exist")
    pointer = stack.current_archive()
    tmp = pointer.with_name(pointer.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, pointer)
    return pointer


def current_version(stack: Stack, model: str | None = None) -> str | None:
    model = model or stack.model_name
    pointer = stack.current_archive(model)
    if not pointer.is_symlink():
        return None
    name = os.readlink(pointer)
    prefix = f"{model}_v"
    return name[len(prefix) : -len(".mar")] if name.startswith(prefix) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded_pid(stack: Stack, service: str) -> int | None:
    path = stack.pid_file(service)
    if not path.is_file():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid and pid_alive(pid) else None


def _spawn(stack: Stack, service: str, cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    with (stack.log_dir / f"{service}.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.pid_file(service).write_text(f"{proc.pid}\n")
    return proc.pid


def start_torchserve(stack: Stack) -> int:
    """Start TorchServe in the foreground of its own session, loading every model's current archive."""
    pointer = stack.current_archive()
    if not pointer.exists():
        raise FileNotFoundError(f"no deployed archive: {pointer} is missing (run scripts/package_mar.sh first)")
    models = [f"{name}={stack.current_archive(name).name}" for name in stack.served_models()]
    stack.ts_dir.mkdir(parents=True, exist_ok=True)
    tmp = stack.run_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    config = render_ts_config(stack)
    env = {
        **os.environ,
        "YOLO_OFFLINE": "1",
        "TMPDIR": str(tmp),  # TorchServe keeps its pid file in the temp dir: one per instance
        "TEMP": str(tmp),
        "LOG_LOCATION": str(stack.log_dir / "torchserve"),
        "METRICS_LOCATION": str(stack.log_dir / "torchserve"),
    }
    cmd = [
        str(VENV_BIN / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(stack.model_store.resolve()),
        "--ts-config",
        str(config),
        "--models",
        *models,
    ]
    return _spawn(stack, "torchserve", cmd, stack.ts_dir, env)


def start_gateway(stack: Stack) -> int:
    env = {
        **os.environ,
        "GATEWAY_TS_INFERENCE_URL": stack.inference_url,
        "GATEWAY_TS_MANAGEMENT_URL": stack.management_url,
        "GATEWAY_TS_KEY_FILE": str(stack.key_file),
        "GATEWAY_DEFAULT_MODEL": stack.model_name,
        "GATEWAY_STATE_STORE": stack.state_location,
        "GATEWAY_CAPTURE_DIR": str(stack.capture_dir),
        **stack.gateway_env,
    }
    cmd = [str(VENV_BIN / "python"), "-m", "gateway.serve", "--host", stack.host, "--port", str(stack.gateway_port)]
    return _spawn(stack, "gateway", cmd, ROOT, env)


def ready_workers(stack: Stack, version: str | None = None, model: str | None = None) -> int:
    """How many workers of a model (default: ``stack.model_name``), or of one version, are READY."""
    try:
        with stack.torchserve(timeout=5) as ts:
            return ts.ready_workers(model or stack.model_name, version)
    except TorchServeError:
        return 0


def all_ready(stack: Stack) -> bool:
    """Every model the stack serves has a READY worker."""
    return all(ready_workers(stack, model=name) > 0 for name in stack.served_models())


def wait_until(check, what: str, timeout: float, pid: int | None = None, log: Path | None = None) -> None:
    """Poll ``check`` until it is true; fail early if the process it depends on died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not pid_alive(pid):
            tail = log.read_text()[-3000:] if log and log.is_file() else ""
            raise RuntimeError(f"{what}: process {pid} exited\n{tail}")
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def up(stack: Stack, timeout: float = 180) -> None:
    """Start whatever is not running yet and wait until the gateway reports ready."""
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    ts_pid = recorded_pid(stack, "torchserve")
    if ts_pid:
        print(f"torchserve already running (pid {ts_pid})")
    else:
        ts_pid = start_torchserve(stack)
        loading = ", ".join(os.readlink(stack.current_archive(name)) for name in stack.served_models())
        print(f"torchserve started (pid {ts_pid}), loading {loading}")
    wait_until(lambda: all_ready(stack), "torchserve", timeout, ts_pid, stack.log_dir / "torchserve.log")
    gw_pid = recorded_pid(stack, "gateway")
    if gw_pid:
        print(f"gateway already running (pid {gw_pid})")
    else:
        gw_pid = start_gateway(stack)
        print(f"gateway started (pid {gw_pid}) on {stack.gateway_url}")
    wait_until(lambda: http_ok(stack.gateway_url + "/health"), "gateway", 60, gw_pid, stack.log_dir / "gateway.log")


def stop_service(stack: Stack, service: str, timeout: float = 30) -> bool:
    """SIGTERM the service's whole process group, SIGKILL what is left after ``timeout``."""
    pid = recorded_pid(stack, service)
    stack.pid_file(service).unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return True
            _reap(pid)
            time.sleep(0.2)
    return True


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextmanager
def running(stack: Stack, version: str) -> Iterator[Stack]:
    """Start ``stack`` serving ``version`` from a cold start, and stop it on the way out."""
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    set_current(stack, version)
    try:
        up(stack)
        yield stack
    finally:
        down(stack)


def down(stack: Stack) -> None:
    for service in ("gateway", "torchserve"):
        print(f"{service}: {'stopped' if stop_service(stack, service) else 'not running'}")
    stack.key_file.unlink(missing_ok=True)


def status(stack: Stack) -> int:
    healthy = True
    for service in ("torchserve", "gateway"):
        pid = recorded_pid(stack, service)
        print(f"{service:<11} {f'running (pid {pid})' if pid else 'stopped'}")
        healthy &= pid is not None
    for name in stack.served_models():
        default = " (/predict)" if name == stack.model_name else ""
        deployed = f"v{current_version(stack, name) or '?'}, {ready_workers(stack, model=name)} workers ready"
        print(f"model       {name}{default}: {deployed}")
    try:
        health = httpx.get(stack.gateway_url + "/health", timeout=5)
        print(f"health      {health.status_code} {health.text}")
        healthy &= health.status_code == 200
    except httpx.HTTPError as exc:
        print(f"health      unreachable ({exc.__class__.__name__})")
        healthy = False
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description="Run the local TorchServe + gateway stack.")
    parser.add_argument("command", choices=["up", "down", "status", "logs", "set-current"])
    parser.add_argument("version", nargs="?", help="for set-current: the version to point the cold start at")
    parser.add_argument("--model", default="yolo", help="for set-current: whose cold start (default: %(default)s)")
    args = parser.parse_args(argv)
    stack = Stack()
    if args.command == "up":
        up(stack)
        print(f"\nready: {stack.gateway_url}  (docs: {stack.gateway_url}/docs)")
        print(f"try:   curl -F file=@samples/scratch_01.jpg {stack.gateway_url}/predict")
        print(f"       curl {stack.gateway_url}/models   (every model; /models/NAME/predict reaches one)")
        return 0
    if args.command == "down":
        down(stack)
        return 0
    if args.command == "status":
        return status(stack)
    if args.command == "set-current":
        if not args.version:
            parser.error("set-current needs a version")
        pointer = set_current(dataclasses.replace(stack, model_name=args.model), args.version)
        print(f"cold start now loads {os.readlink(pointer)}")
        return 0
    for name in ("torchserve.log", "gateway.log", "torchserve/ts_log.log", "torchserve/model_log.log"):
        path = stack.log_dir / name
        if path.is_file():
            print(f"==> {path.relative_to(ROOT)} <==")
            print("\n".join(path.read_text(errors="replace").splitlines()[-40:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
