"""Offline checks of the container images: the Dockerfiles (hadolint, pinned bases, no root, health checks,
what they install against what the code imports) and TorchServe's container configuration."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.config_helpers import BIN, DOCKERFILES, ROOT, TS_HOME, TS_PORTS, port_of, read_properties, run


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile):
    result = run(BIN / "hadolint", "--no-color", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_pins_base_image_and_drops_root(dockerfile):
    text = dockerfile.read_text()
    for image in re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, re.M):
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert "@sha256:" in image or re.fullmatch(r"v?\d+(\.\d+)+[\w.-]*", tag), f"{image} is not pinned"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", users


@pytest.mark.parametrize("dockerfile", DOCKERFILES[:2], ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_has_healthcheck(dockerfile):
    assert re.search(r"^HEALTHCHECK\s+.*CMD", dockerfile.read_text(), re.M | re.S)


def test_torchserve_image_exposes_only_inference():
    # `docker run -P` publishes every EXPOSEd port; management and metrics must never be.
    exposed = re.findall(r"^EXPOSE\s+(.+)$", DOCKERFILES[0].read_text(), re.M)
    assert [p for line in exposed for p in line.split()] == [str(TS_PORTS["inference"])]


def pip_packages(dockerfile: Path) -> set[str]:
    """Package names from the Dockerfile's `pip install` (options and their values skipped)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    names = set()
    takes_value = {"-c", "-r", "--constraint", "--requirement", "--index-url", "--extra-index-url", "-i"}
    for command in re.findall(r"pip install (.*?)(?:&&|$)", text, re.M):
        # ${ARG:+--option value}: a build-time option, not a package.
        tokens = iter(re.sub(r"\$\{[^}]*\}", " ", command).split())
        for token in tokens:
            if token in takes_value:
                next(tokens)
            elif not token.startswith("-"):
                names.add(canonicalize_name(Requirement(token).name))
    return names


def dependency_closure(names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def third_party_imports(sources: list[Path]) -> set[str]:
    # Sibling modules and the repository's own top-level package (e.g. `gateway`) are not third-party.
    local = {p.stem for src in sources for p in src.parent.iterdir()} | {
        src.relative_to(ROOT).parts[0] for src in sources
    }
    modules = set()
    for src in sources:
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in local}


@pytest.mark.parametrize(
    ("dockerfile", "sources"),
    [
        (DOCKERFILES[0], ["serving/yolo_handler.py", "serving/yolo_image.py"]),
        (DOCKERFILES[1], ["gateway/**/*.py", "serving/yolo_contract.py", "serving/yolo_files.py"]),
    ],
    ids=["serving", "gateway"],
)
def test_image_installs_what_the_code_imports(dockerfile, sources):
    files = [p for pattern in sources for p in ROOT.glob(pattern) if p.is_file()]
    installed = dependency_closure(pip_packages(dockerfile))
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module in third_party_imports(files):
        owners = {canonicalize_name(d) for d in dists.get(module, [])}
        if not owners & installed:
            missing[module] = sorted(owners) or "not installed in the venv either"
    assert not missing, f"{dockerfile.relative_to(ROOT)} does not install: {missing}"


def first_party_closure(pattern: str) -> set[str]:
    """The repository files the modules under ``pattern`` import, and what those import in turn (outside gateway/)."""
    todo, found = [p for p in ROOT.glob(pattern) if p.is_file()], set()
    while todo:
        for node in ast.walk(ast.parse(todo.pop().read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                path = ROOT / (node.module.replace(".", "/") + ".py")
                if node.module.split(".")[0] != "gateway" and path.is_file() and str(path) not in found:
                    found.add(str(path))
                    todo.append(path)
    return {str(Path(p).relative_to(ROOT)) for p in found}


@pytest.mark.parametrize("dockerfile", [DOCKERFILES[1], ROOT / "docker" / "swarm" / "replica.Dockerfile"])
def test_gateway_image_copies_the_modules_the_gateway_imports(dockerfile):
    """The gateway image copies serving/ and drift/ file by file: each one the gateway imports is copied,
    and let through .dockerignore's allow-list."""
    copied = {
        source
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    allowed = set((ROOT / ".dockerignore").read_text().split())
    needed = first_party_closure("gateway/**/*.py")
    assert needed - copied == set(), f"{dockerfile.relative_to(ROOT)} does not copy them"
    assert {f"!{path}" for path in needed} - allowed == set(), ".dockerignore keeps them out of the build context"


# --------------------------------------------------------------------------- TorchServe config


CONTAINER_TS_CONFIG = ROOT / "serving" / "docker" / "config.properties"
# Keys where the container config must differ from the local one, and why it may.
CONTAINER_ONLY_DIFFERENCES = {
    "inference_address",  # all interfaces inside the container network
    "management_address",
    "metrics_address",
    "model_store",
    "allowed_urls",
    "enable_envvars_config",  # lets Kubernetes rebind to loopback via TS_* variables
}


def test_container_ts_config_keeps_security_settings():
    props = read_properties(CONTAINER_TS_CONFIG)
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "true"
    assert props["metrics_mode"] == "prometheus"
    assert props["inference_address"] == f"http://0.0.0.0:{TS_PORTS['inference']}"
    assert {name: port_of(props[f"{name}_address"]) for name in TS_PORTS} == TS_PORTS
    assert props["model_store"] == f"{TS_HOME}/model-store"
    allowed = re.compile(props["allowed_urls"])
    assert allowed.fullmatch(f"file://{TS_HOME}/model-store/yolo_v2.0.mar")
    for url in ("https://example.com/yolo.mar", "file:///etc/passwd", f"file://{TS_HOME}/model-store/../x.mar"):
        assert not allowed.fullmatch(url), url


def test_container_ts_config_matches_local_config():
    local = read_properties(ROOT / "serving" / "config.properties")
    container = read_properties(CONTAINER_TS_CONFIG)
    drift = {
        key: (local.get(key), container.get(key))
        for key in (local.keys() | container.keys()) - CONTAINER_ONLY_DIFFERENCES
        if local.get(key) != container.get(key)
    }
    assert not drift, f"serving/config.properties vs serving/docker/config.properties: {drift}"
