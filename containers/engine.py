"""A Docker engine, what its containers report, Compose, and the base images the Dockerfiles start FROM.

Used by containers/compose_check.py, containers/swarm.py and containers/swarm_check.py. Where an
engine answers it is used as it is; where none does, Debian's docker.io is installed and started,
and only what was started here is stopped again. A running container's address, health and
memory come from ``docker inspect`` and its cgroup. Base images are pulled where a registry gives
them; where Docker Hub is unreachable they are built locally from Debian bookworm packages
(debootstrap + ``docker import``, then docker/local/*.Dockerfile) and tagged so that
serving/Dockerfile and gateway/Dockerfile build unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BASE = "python:3.11.11-slim-bookworm"  # the FROM line of both Dockerfiles
PROMETHEUS_IMAGE = "prom/prometheus:v2.55.1"  # docker-compose.yml's default
LOCAL_DEBIAN = "yolo-local/debian:bookworm"
LOCAL_PROMETHEUS = "yolo-local/prometheus:bookworm"
STAND_IN_LABEL = "io.github.yolo-serving.local-stand-in"  # set by docker/local/*.Dockerfile
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the official images add to a minimal Debian; Python comes in docker/local/python.Dockerfile.
DEBIAN_PACKAGES = "ca-certificates,netbase,tzdata"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # serving/Dockerfile's TORCH_INDEX_URL
DEBIAN_SOURCES = """Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class SetupError(Exception):
    """The engine, Compose or a base image could not be had: the reason, for the operator."""


def run(*cmd: str, check: bool = True, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, timeout=timeout, text=True, **kwargs)


def quiet(*cmd: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return run(*cmd, check=False, timeout=timeout, capture_output=True, **kwargs)


def engine_answers() -> bool:
    return shutil.which("docker") is not None and quiet("docker", "info", timeout=20).returncode == 0


def apt_install(*packages: str) -> None:
    print(f"installing Debian packages: {' '.join(packages)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["update"], ["install", "-y", "--no-install-recommends", *packages]):
        result = quiet("apt-get", "-qq", *command, timeout=900, env=env)
        if result.returncode != 0:
            raise SetupError(f"apt-get {' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


class Engine:
    """The Docker engine for the ``with`` block; stopped afterwards only if started here (and not ``keep``)."""

    def __init__(self, log_dir: Path, keep: bool = False):
        self.log = log_dir / "dockerd.log"
        self.keep = keep
        self.started: subprocess.Popen | None = None

    def __enter__(self) -> Engine:
        if engine_answers():
            print("docker engine: using the one that answers", flush=True)
            return self
        if os.geteuid() != 0:
            raise SetupError("no Docker engine answers and starting one needs root")
        if shutil.which("dockerd") is None:
            apt_install("docker.io")
        print(f"docker engine: starting dockerd --storage-driver=overlay2 (log: {self.log})", flush=True)
        self.started = subprocess.Popen(
            ["dockerd", "--storage-driver=overlay2"],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not engine_answers():
            if self.started.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = self.log.read_text()[-2000:]
                raise SetupError(f"dockerd did not start (exit {self.started.returncode}); its log ends:\n{tail}")
            time.sleep(1)
        return self

    def __exit__(self, *exc) -> None:
        if self.started is None or self.started.poll() is not None or self.keep:
            return
        print("docker engine: stopping the dockerd started here", flush=True)
        self.started.send_signal(signal.SIGTERM)
        try:
            self.started.wait(60)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait()


def inspect(container: str, template: str) -> str:
    """One field of ``docker inspect``, by Go template."""
    return quiet("docker", "inspect", "-f", template, container).stdout.strip()


def addresses(container: str) -> list[str]:
    """The container's address on each of its networks: reachable from this host over the Docker bridge."""
    return inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}").split()


def health(container: str) -> str:
    """Its health check's status (``healthy``, ``starting``, ``unhealthy``), or ``none`` without one."""
    return inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}")


def memory_mib(container: str) -> float:
    """What a container holds in memory that the kernel cannot drop: anonymous pages plus tmpfs (shmem)."""
    stat = quiet(
        "docker", "exec", container, "sh", "-c",
        "cat /sys/fs/cgroup/memory.stat 2>/dev/null || cat /sys/fs/cgroup/memory/memory.stat",
    ).stdout  # fmt: skip
    values = dict(line.split() for line in stat.splitlines() if len(line.split()) == 2)
    anon = values["anon"] if "anon" in values else values["rss"]  # cgroup v2, v1
    return (int(anon) + int(values["shmem"])) / 2**20


def compose_command() -> list[str]:
    """``docker compose`` (v2) where the plugin is there, else Debian's docker-compose (v1)."""
    if quiet("docker", "compose", "version").returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        apt_install("docker-compose")
    return ["docker-compose"]


def image_exists(tag: str) -> bool:
    return quiet("docker", "image", "inspect", tag).returncode == 0


def is_stand_in(tag: str) -> bool:
    labels = quiet("docker", "image", "inspect", "-f", "{{json .Config.Labels}}", tag).stdout
    return STAND_IN_LABEL in labels


def pulled(tag: str) -> bool:
    """Pull ``tag`` unless present; False where no registry gives it (fails fast where DNS does)."""
    if image_exists(tag):
        return True
    try:
        result = quiet("docker", "pull", "--quiet", tag, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    if result.returncode != 0:
        print(f"cannot pull {tag}: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'}")
    return result.returncode == 0


def trust_local_cas(rootfs: Path) -> None:
    """This machine's own CAs (a TLS-inspecting egress proxy's, say) for pip and apt inside the images."""
    local = sorted(LOCAL_CAS.glob("*.crt"))
    if not local:
        return
    target = rootfs / LOCAL_CAS.relative_to("/")
    for cert in local:
        shutil.copy(cert, target / cert.name)
    run("chroot", str(rootfs), "update-ca-certificates", capture_output=True)
    print(f"local base trusts this machine's CAs: {', '.join(c.name for c in local)}")


def build_local_debian() -> None:
    """Debian bookworm (minbase + DEBIAN_PACKAGES) by debootstrap, imported as LOCAL_DEBIAN."""
    if image_exists(LOCAL_DEBIAN):
        return
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        print(f"debootstrap bookworm from {DEBIAN_MIRROR} with {DEBIAN_PACKAGES} ...", flush=True)
        run(
            "debootstrap",
            "--variant=minbase",
            f"--include={DEBIAN_PACKAGES}",
            "bookworm",
            str(rootfs),
            DEBIAN_MIRROR,
            stdout=subprocess.DEVNULL,
        )
        trust_local_cas(rootfs)
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(DEBIAN_SOURCES)
        # As in Debian's official images: package scripts must not try to start services.
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        for cache in ("var/cache/apt", "var/lib/apt/lists"):
            for entry in (rootfs / cache).rglob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--one-file-system", "-c", "."], stdout=subprocess.PIPE)
        run(
            "docker",
            "import",
            "--change",
            'CMD ["bash"]',
            "-",
            LOCAL_DEBIAN,
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            raise SetupError("tar of the debootstrap root file system failed")


def build_local(dockerfile: str, tag: str) -> None:
    print(f"building {tag} from {dockerfile}", flush=True)
    result = quiet("docker", "build", "-f", str(ROOT / dockerfile), "-t", tag, str(ROOT / "docker/local"), timeout=1800)
    if result.returncode != 0:
        raise SetupError(f"building {tag} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")


def ensure_base_images() -> dict[str, str]:
    """Make PYTHON_BASE present; return compose environment naming the Prometheus image to use."""
    if not pulled(PYTHON_BASE):
        build_local_debian()
        build_local("docker/local/python.Dockerfile", PYTHON_BASE)
    if is_stand_in(PYTHON_BASE):
        print(f"{PYTHON_BASE}: local stand-in (Debian bookworm's python3.11), not the official image")
    if pulled(PROMETHEUS_IMAGE):
        return {}
    build_local_debian()
    if not image_exists(LOCAL_PROMETHEUS):
        build_local("docker/local/prometheus.Dockerfile", LOCAL_PROMETHEUS)
    print(f"prometheus: {LOCAL_PROMETHEUS} (Debian's prometheus package) in place of {PROMETHEUS_IMAGE}")
    return {"PROMETHEUS_IMAGE": LOCAL_PROMETHEUS}


def torch_index_url() -> str | None:
    """The TorchServe image's TORCH_INDEX_URL: None keeps the Dockerfile's (CPU wheels), "" takes PyPI's.

    The operator's TORCH_INDEX_URL wins; where the CPU index is unreachable, PyPI's torch wheel (a
    CUDA build) is used instead, as the same build on either machine must work.
    """
    if "TORCH_INDEX_URL" in os.environ:
        return os.environ["TORCH_INDEX_URL"]
    try:
        httpx.head(DEFAULT_TORCH_INDEX + "/", timeout=10)
    except httpx.HTTPError:
        print(f"{DEFAULT_TORCH_INDEX} unreachable: building with PyPI's torch wheel (TORCH_INDEX_URL=)")
        return ""
    return None
