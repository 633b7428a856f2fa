"""Docker Swarm for the replica stack (docker/swarm/stack.yml): images, the swarm, the stack, updates.

Used by ``make swarm-up`` / ``swarm-down`` (scripts/swarm.py) and ``make swarm-test``
(containers/swarm_check.py). Images are built locally on the base images ``make compose-test``
makes (containers/engine.py): the replica image starts FROM the TorchServe image of
serving/Dockerfile, whose layers that build already cached. Services are deployed with
``--resolve-image never``: there is no registry to ask, and the daemon would try Docker Hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from containers.engine import ROOT, SetupError, ensure_base_images, quiet, run, torch_index_url

STACK_FILE = ROOT / "docker" / "swarm" / "stack.yml"
TORCHSERVE_IMAGE = "yolo-swarm/torchserve:local"
# tag -> Dockerfile, in build order (the replica starts FROM the TorchServe image)
IMAGES = {
    TORCHSERVE_IMAGE: "serving/Dockerfile",
    "yolo-swarm/replica:local": "docker/swarm/replica.Dockerfile",
    "yolo-swarm/haproxy:local": "docker/swarm/haproxy.Dockerfile",
    "yolo-swarm/redis:local": "docker/swarm/redis.Dockerfile",
}
UPDATE_DONE = {"completed", "rollback_completed", "paused", "rollback_paused"}


def build_images(log_dir: Path) -> dict[str, float]:
    """Build every image of the stack (cached layers make a rebuild seconds); seconds per image."""
    ensure_base_images()
    index = torch_index_url()
    took = {}
    for tag, dockerfile in IMAGES.items():
        args = ["--build-arg", f"TORCH_INDEX_URL={index}"] if tag == TORCHSERVE_IMAGE and index is not None else []
        log = log_dir / f"build-{tag.split('/')[1].split(':')[0]}.log"
        start = time.monotonic()
        with log.open("w") as out:
            built = run("docker", "build", "-f", dockerfile, "-t", tag, *args, ".", cwd=ROOT, check=False,
                        stdout=out, stderr=subprocess.STDOUT, timeout=3600)  # fmt: skip
        if built.returncode != 0:
            raise SetupError(f"building {tag} from {dockerfile} failed; its log ends:\n{log.read_text()[-3000:]}")
        took[tag] = time.monotonic() - start
        print(f"built {tag}: {took[tag]:.0f} s", flush=True)
    return took


def swarm_state() -> str:
    return quiet("docker", "info", "-f", "{{.Swarm.LocalNodeState}}").stdout.strip()


def join_or_init() -> bool:
    """Make this engine a swarm manager; True when the swarm was created here (and is to be left)."""
    if swarm_state() == "active":
        print("swarm: using the one this engine is part of", flush=True)
        return False
    made = quiet("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
    if made.returncode != 0:
        raise SetupError(f"docker swarm init failed: {made.stderr.strip()}")
    print("swarm: initialised here (single node, advertising 127.0.0.1)", flush=True)
    return True


def leave() -> None:
    quiet("docker", "swarm", "leave", "--force")
    print("swarm: left (it was created here)", flush=True)


def tasks(service: str) -> list[dict]:
    """The service's tasks that should be running, with their state and container."""
    ids = quiet("docker", "service", "ps", "-q", "--filter", "desired-state=running", service).stdout.split()
    if not ids:
        return []
    found = json.loads(quiet("docker", "inspect", *ids).stdout or "[]")
    return [
        {
            "id": t["ID"],
            "state": t["Status"]["State"],
            "container": t["Status"].get("ContainerStatus", {}).get("ContainerID", ""),
            "env": t["Spec"]["ContainerSpec"].get("Env", []),
        }
        for t in found
    ]


@dataclass
class Stack:
    """One deployed stack: its name, the variables stack.yml reads and the balancer's two addresses."""

    name: str
    env: dict[str, str]
    http_port: int
    https_port: int
    ca: Path | None = None
    deployed: bool = field(default=False, init=False)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def service(self, name: str) -> str:
        return f"{self.name}_{name}"

    def deploy(self) -> None:
        env = {**self.env, "SWARM_HTTP_PORT": str(self.http_port), "SWARM_HTTPS_PORT": str(self.https_port)}
        result = quiet("docker", "stack", "deploy", "-c", str(STACK_FILE), "--resolve-image", "never", self.name,
                       env={**os.environ, **env}, timeout=120)  # fmt: skip
        if result.returncode != 0:
            raise SetupError(f"docker stack deploy failed: {result.stderr.strip() or result.stdout.strip()}")
        self.deployed = True

    def replicas_ready(self, count: int) -> bool:
        """``count`` replica tasks running (Swarm only calls a task running once its health check passed)."""
        states = [t["state"] for t in tasks(self.service("replica"))]
        return len(states) == count and all(state == "running" for state in states)

    def serving(self, count: int) -> set[str]:
        """The replicas the balancer answers from, found by asking until ``count`` distinct ones answered."""
        seen: set[str] = set()
        with httpx.Client(timeout=10) as client:
            for _ in range(count * 12):
                try:
                    answer = client.get(f"{self.http}/health")
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200 and "x-served-by" in answer.headers:
                    seen.add(answer.headers["x-served-by"])
                if len(seen) >= count:
                    break
        return seen

    def wait_ready(self, count: int, timeout: float) -> float:
        """Until ``count`` replicas are healthy and the balancer answers from each; the seconds it took."""
        start = time.monotonic()
        while not (self.replicas_ready(count) and len(self.serving(count)) == count):
            if time.monotonic() - start > timeout:
                states = [t["state"] for t in tasks(self.service("replica"))]
                raise TimeoutError(f"{count} replicas not ready and balanced after {timeout:.0f} s (tasks: {states})")
            time.sleep(1)
        return time.monotonic() - start

    def scale(self, count: int, timeout: float = 600) -> float:
        quiet("docker", "service", "scale", "--detach", f"{self.service('replica')}={count}")
        return self.wait_ready(count, timeout)

    def update(self, *args: str, timeout: float = 900) -> tuple[str, float]:
        """``docker service update ARGS`` on the replicas; the update's final state and how long it took."""
        service = self.service("replica")
        before = update_status(service).get("StartedAt")
        start = time.monotonic()
        result = quiet("docker", "service", "update", "--detach", *args, service, timeout=60)
        if result.returncode != 0:
            raise SetupError(f"docker service update {' '.join(args)}: {result.stderr.strip()}")
        while True:
            status = update_status(service)
            if status.get("StartedAt") != before and status.get("State") in UPDATE_DONE:
                return status["State"], time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"update {' '.join(args)} still {status.get('State')} after {timeout:.0f} s")
            time.sleep(1)

    def remove(self, timeout: float = 120) -> float:
        """``docker stack rm``, then wait until its containers and network are gone; the seconds it took."""
        start = time.monotonic()
        quiet("docker", "stack", "rm", self.name)
        label = f"label=com.docker.stack.namespace={self.name}"

        def gone() -> bool:
            left = quiet("docker", "ps", "-aq", "--filter", label).stdout.split()
            networks = quiet("docker", "network", "ls", "-q", "--filter", label).stdout.split()
            return not left and not networks

        while not gone() and time.monotonic() - start < timeout:
            time.sleep(1)
        quiet("docker", "volume", "rm", f"{self.name}_redis-data")
        self.deployed = False
        return time.monotonic() - start


def update_status(service: str) -> dict:
    out = quiet("docker", "service", "inspect", "-f", "{{json .UpdateStatus}}", service).stdout.strip()
    return json.loads(out) if out and out != "null" else {}


def self_signed(folder: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A certificate for ``host`` and 127.0.0.1 with its key (the PEM HAProxy reads), and the certificate alone."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert, pem = folder / "tls.key", folder / "tls.crt", folder / "tls.pem"
    names = f"subjectAltName=DNS:{host},IP:127.0.0.1"
    made = quiet("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-keyout", str(key),
                 "-out", str(cert), "-subj", f"/CN={host}", "-addext", names)  # fmt: skip
    if made.returncode != 0:
        raise SetupError(f"openssl could not make a self-signed certificate: {made.stderr.strip()}")
    pem.write_text(cert.read_text() + key.read_text())
    pem.chmod(0o600)
    key.unlink()
    return pem, cert
