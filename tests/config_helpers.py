"""What the offline configuration tests (tests/test_config_*.py) share: where each configuration lives, the
ports and paths they must agree on, and the readers of Compose, Kubernetes and .properties files."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
MONITORING = ROOT / "monitoring"
K8S = ROOT / "k8s"
KSERVE = K8S / "kserve"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
SWARM = ROOT / "docker" / "swarm"
DOCKERFILES = [ROOT / "serving" / "Dockerfile", ROOT / "gateway" / "Dockerfile", KSERVE / "Dockerfile"]
K8S_MANIFESTS = sorted(K8S.rglob("*.yaml"))

TS_HOME = "/home/model-server"
TS_PORTS = {"inference": 8085, "management": 8086, "metrics": 8082}
GATEWAY_PORT = 8000
GRAFANA_PORT = 3000


def run(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, check=False)


def yamllint(*targets: Path) -> subprocess.CompletedProcess:
    """yamllint --strict with the repository's .yamllint.yaml on ``targets``."""
    return run(sys.executable, "-m", "yamllint", "--strict", "-c", ROOT / ".yamllint.yaml", *targets)


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def read_properties(path: Path) -> dict[str, str]:
    """Java .properties subset used here: key=value lines, # comments, backslash escapes."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            props[key.strip()] = re.sub(r"\\(.)", r"\1", value.strip())
    return props


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def named_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for a Compose service's short-syntax volume entries."""
    mounts = {}
    for entry in service.get("volumes", []):
        # ${VAR:-default}: the default, whose colon is not a field separator.
        source, target, *mode = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", entry).split(":")
        mounts[target] = (source, "ro" in mode)
    return mounts


@cache
def k8s_resources() -> dict[tuple[str, str], dict]:
    """(kind, name) -> resource of every plain Kubernetes manifest (the KServe example's CRD left out)."""
    resources = {}
    for path in K8S_MANIFESTS:
        if KSERVE not in path.parents:
            for doc in load_yaml_docs(path):
                resources[(doc["kind"], doc["metadata"]["name"])] = doc
    return resources
