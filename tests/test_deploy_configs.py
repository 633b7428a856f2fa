"""Offline checks of the container, Compose, monitoring and Kubernetes configuration.

Everything here runs without Docker or a cluster, using the real linters/validators
from the venv (hadolint, yamllint, kubernetes-validate). The one live test
(marked integration) checks that every metric the dashboards query is exported.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import mimetypes
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
MONITORING = ROOT / "monitoring"
K8S = ROOT / "k8s"
KSERVE = K8S / "kserve"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
SWARM = ROOT / "docker" / "swarm"
DOCKERFILES = [ROOT / "serving" / "Dockerfile", ROOT / "gateway" / "Dockerfile", KSERVE / "Dockerfile"]
TS_METRICS_YAML = Path(importlib.util.find_spec("ts").origin).parent / "configs" / "metrics.yaml"

TS_HOME = "/home/model-server"
TS_PORTS = {"inference": 8085, "management": 8086, "metrics": 8082}
GATEWAY_PORT = 8000
GRAFANA_PORT = 3000

# The gateway's metric contract (name -> Prometheus type), as the gateway exports it.
GATEWAY_METRICS = {
    "gateway_requests_total": "counter",
    "gateway_request_duration_seconds": "histogram",
    "gateway_upstream_duration_seconds": "histogram",
    "gateway_in_flight_requests": "gauge",
    "gateway_upload_bytes": "histogram",
    "gateway_detections_total": "counter",
    "gateway_predictions_total": "counter",
    "gateway_cut_uploads_total": "counter",
    "gateway_pending_predictions": "gauge",
    "model_drift_statistic": "gauge",
    "model_drift_threshold": "gauge",
    "model_drift_alarm": "gauge",
}


def run(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, check=False)


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


# --------------------------------------------------------------------------- Dockerfiles


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


# --------------------------------------------------------------------------- YAML lint


def test_yamllint():
    targets = [COMPOSE, MONITORING, K8S, SWARM / "stack.yml", ROOT / ".yamllint.yaml"]
    result = run(sys.executable, "-m", "yamllint", "--strict", "-c", ROOT / ".yamllint.yaml", *targets)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Compose


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def published_ports(service: dict) -> list[tuple[str, str]]:
    """(host_ip, container_port) for each published port, short or long syntax."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "")), str(entry["target"])))
            continue
        # Blank out ${VAR:-default} first: its colon is not a field separator.
        fields = re.sub(r"\$\{[^}]*\}", "VAR", str(entry)).split("/")[0].split(":")
        out.append((fields[0] if len(fields) == 3 else "", fields[-1]))
    return out


def named_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for short-syntax volume entries."""
    mounts = {}
    for entry in service.get("volumes", []):
        # ${VAR:-default}: the default, whose colon is not a field separator.
        source, target, *mode = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", entry).split(":")
        mounts[target] = (source, "ro" in mode)
    return mounts


def test_compose_services():
    assert set(compose()["services"]) == {"torchserve", "gateway", "prometheus", "grafana"}


def test_compose_publishes_only_gateway_and_grafana():
    published = {name: published_ports(svc) for name, svc in compose()["services"].items() if svc.get("ports")}
    assert {name: [port for _, port in ports] for name, ports in published.items()} == {
        "gateway": [str(GATEWAY_PORT)],
        "grafana": [str(GRAFANA_PORT)],
    }
    # Grafana lets anonymous viewers in: loopback only.
    assert published["grafana"][0][0] == "127.0.0.1"


def test_compose_healthchecks_and_ordering():
    services = compose()["services"]
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        depends = svc.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use conditions"
        for target, cond in depends.items():
            assert target in services and cond == {"condition": "service_healthy"}, (name, target, cond)
    assert "torchserve" in services["gateway"]["depends_on"]


def test_compose_images_pinned_or_built_here():
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        else:
            image = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", svc["image"])  # ${VAR:-default}: the default
            assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+", image), f"{name}: {svc['image']} is not pinned"


def test_compose_model_store_and_tokens():
    services = compose()["services"]
    ts_mounts, gw_mounts = named_mounts(services["torchserve"]), named_mounts(services["gateway"])
    assert f"{TS_HOME}/model-store" in ts_mounts
    # TorchServe writes key_file.json into its working directory (the image's last WORKDIR).
    workdir = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILES[0].read_text(), re.M)[-1]
    tokens, ts_read_only = ts_mounts[workdir]
    assert tokens in compose()["volumes"] and not ts_read_only
    gw_target = next(target for target, (source, _) in gw_mounts.items() if source == tokens)
    assert gw_mounts[gw_target][1], "the gateway must mount the tokens volume read-only"
    env = services["gateway"]["environment"]
    assert env["GATEWAY_TS_KEY_FILE"] == f"{gw_target}/key_file.json"
    others = [n for n, s in services.items() if n not in {"torchserve", "gateway"} and tokens in str(s.get("volumes"))]
    assert not others, f"tokens volume also mounted by {others}"
    assert compose()["volumes"][tokens]["driver_opts"]["type"] == "tmpfs"


def test_compose_networks_keep_torchserve_internal():
    services, networks = compose()["services"], compose()["networks"]
    assert all(networks[n].get("internal") for n in services["torchserve"]["networks"])
    env = services["gateway"]["environment"]
    assert env["GATEWAY_TS_INFERENCE_URL"] == f"http://torchserve:{TS_PORTS['inference']}"
    assert env["GATEWAY_TS_MANAGEMENT_URL"] == f"http://torchserve:{TS_PORTS['management']}"


# --------------------------------------------------------------------------- Prometheus / Grafana

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels, ranges, literals removed)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\boffset\s+-?\S+", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    expr = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", expr)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group().lower() in PROMQL_KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group())
    return names


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in expressions(item)]
    return []


def monitoring_documents() -> dict[Path, object]:
    docs = {p: json.loads(p.read_text()) for p in MONITORING.rglob("*.json")}
    docs |= {p: yaml.safe_load(p.read_text()) for p in MONITORING.rglob("*.yml")}
    return docs


def queried_metric_names() -> set[str]:
    return {
        name for doc in monitoring_documents().values() for e in expressions(doc) for name in promql_metric_names(e)
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('histogram_quantile(0.95, sum by (le) (rate(a_bucket{route=~"/p.*"}[5m])))', {"a_bucket"}),
        ("sum(rate(a_total[$__rate_interval])) / sum by (v) (rate(b[1m])) / 1e3", {"a_total", "b"}),
        ("sort_desc(sum by (class_name) (increase(c_total[$__range])))", {"c_total"}),
        ("max by (ModelName) (PredictionTime)", {"PredictionTime"}),
        ("a unless on (x) b offset 5m or sum(c) without (d) > bool 2", {"a", "b", "c"}),
    ],
)
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names


def series_names(metric: str, kind: str) -> set[str]:
    suffixes = {"histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}.get(kind, [""])
    return {metric + suffix for suffix in suffixes}


def test_prometheus_scrapes_gateway_and_torchserve():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert targets == {"gateway": [f"gateway:{GATEWAY_PORT}"], "torchserve": [f"torchserve:{TS_PORTS['metrics']}"]}
    services = compose()["services"]
    for job in targets:  # Prometheus shares a network with every target
        assert set(services["prometheus"]["networks"]) & set(services[job]["networks"]), job
    mounted = named_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"][0]
    assert (ROOT / mounted).resolve() == MONITORING / "prometheus.yml"


def test_grafana_provisioning_matches_compose():
    grafana = compose()["services"]["grafana"]
    mounts = {source: target for target, (source, _) in named_mounts(grafana).items()}
    provisioning = MONITORING / "grafana" / "provisioning"
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert set(grafana["networks"]) & set(compose()["services"]["prometheus"]["networks"])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "yolo.yml").read_text())["providers"]
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).relative_to(provider["options"]["path"])).is_file()
    for dashboard in DASHBOARDS.glob("*.json"):
        panels = json.loads(dashboard.read_text())["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_dashboard_covers_the_required_views():
    exprs = [e for p in DASHBOARDS.glob("*.json") for e in expressions(json.loads(p.read_text()))]
    used = {name for e in exprs for name in promql_metric_names(e)}
    assert {
        "gateway_requests_total",  # request rate, error rate by status
        "gateway_request_duration_seconds_bucket",  # latency percentiles
        "ts_queue_latency_microseconds",
        "ts_inference_latency_microseconds",
        "ts_inference_requests_total",
        "gateway_predictions_total",  # per model version
        "gateway_detections_total",  # per class
    } <= used
    assert any("by (status)" in e for e in exprs)
    assert any("by (model, model_version)" in e for e in exprs)
    assert any("by (model, class_name)" in e for e in exprs)
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}, " in e and "gateway_request_duration" in e for e in exprs)


def test_queried_metrics_are_known():
    """Offline: every queried name is in the gateway contract or TorchServe's metrics.yaml.

    TorchServe's Java Prometheus client exports names as written there (no _total added).
    """
    known = {s for name, kind in GATEWAY_METRICS.items() for s in series_names(name, kind)}
    ts_config = yaml.safe_load(TS_METRICS_YAML.read_text())
    for section in ("ts_metrics", "model_metrics"):
        for kind, metrics in ts_config[section].items():
            known |= {s for metric in metrics for s in series_names(metric["name"], kind)}
    assert not queried_metric_names() - known


def exposed_series(exposition: str) -> set[str]:
    """Series names in Prometheus text format, including families declared without samples yet."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names |= series_names(name, kind.strip())
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


@pytest.mark.integration
def test_queried_metrics_exist_live(stack):
    import httpx

    image = stack.sample_images[0]
    content_type = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
    with httpx.Client(timeout=60) as client:
        # One prediction first, so labelled series (per model version, class...) exist.
        response = client.post(
            f"{stack.gateway_url}/predict", files={"file": (image.name, image.read_bytes(), content_type)}
        )
        assert response.status_code == 200, response.text
        exposed = set()
        for url in (f"{stack.gateway_url}/metrics", f"{stack.metrics_url}/metrics"):
            metrics = client.get(url)
            assert metrics.status_code == 200, url
            exposed |= exposed_series(metrics.text)
    assert not queried_metric_names() - exposed


# --------------------------------------------------------------------------- Kubernetes


K8S_MANIFESTS = sorted(K8S.rglob("*.yaml"))


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(
            path,
            marks=pytest.mark.skip(
                reason="KServe CRD: kubernetes-validate has no schema for serving.kserve.io; "
                "checked by test_kserve_inferenceservice instead"
            ),
        )
        if KSERVE in path.parents
        else path
        for path in K8S_MANIFESTS
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_kubernetes_validate(manifest):
    result = run(BIN / "kubernetes-validate", "--strict", "--quiet", manifest)
    assert result.returncode == 0, result.stdout + result.stderr


@cache
def k8s_resources() -> dict[tuple[str, str], dict]:
    resources = {}
    for path in K8S_MANIFESTS:
        if KSERVE not in path.parents:
            for doc in load_yaml_docs(path):
                resources[(doc["kind"], doc["metadata"]["name"])] = doc
    return resources


def test_k8s_everything_in_one_namespace():
    namespaces = {r["metadata"].get("namespace") for (kind, _), r in k8s_resources().items() if kind != "Namespace"}
    assert namespaces == {name for kind, name in k8s_resources() if kind == "Namespace"}


def pod_spec() -> dict:
    (deployment,) = [r for (kind, _), r in k8s_resources().items() if kind == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def test_k8s_deployment_probes_resources_and_security():
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"torchserve", "gateway"}
    for name, container in containers.items():
        assert {"readinessProbe", "livenessProbe"} <= container.keys(), name
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
        assert "memory" in container["resources"]["limits"], name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_k8s_references_exist():
    spec, resources = pod_spec(), k8s_resources()
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            kind, ref = (
                ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
            )
            assert (kind, ref["name"]) in resources, ref
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims and all(("PersistentVolumeClaim", c) in resources for c in claims)
    (hpa,) = [r for (kind, _), r in resources.items() if kind == "HorizontalPodAutoscaler"]
    assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in resources
    scaled_on = {
        m["containerResource"]["container"] for m in hpa["spec"]["metrics"] if m["type"] == "ContainerResource"
    }
    assert scaled_on == {"torchserve", "gateway"}


def test_k8s_model_store_and_tokens_volumes():
    spec = pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {c["name"]: {m["mountPath"]: m for m in c["volumeMounts"]} for c in spec["containers"]}
    store = mounts["torchserve"][f"{TS_HOME}/model-store"]
    assert "persistentVolumeClaim" in volumes[store["name"]] and store["readOnly"] is True
    tokens = mounts["torchserve"][f"{TS_HOME}/tokens"]
    assert volumes[tokens["name"]]["emptyDir"]["medium"] == "Memory"
    (gw_tokens,) = [m for m in mounts["gateway"].values() if m["name"] == tokens["name"]]
    assert gw_tokens["readOnly"] is True


def test_k8s_management_api_stays_private():
    resources = k8s_resources()
    settings = {}
    for (kind, _), r in resources.items():
        if kind == "ConfigMap":
            settings |= r["data"]
    # Bound to loopback: unreachable from outside the pod whatever the network does.
    assert settings["TS_MANAGEMENT_ADDRESS"] == f"http://127.0.0.1:{TS_PORTS['management']}"
    assert settings["TS_INFERENCE_ADDRESS"] == f"http://127.0.0.1:{TS_PORTS['inference']}"
    private = {TS_PORTS["management"], TS_PORTS["inference"]}
    for container in pod_spec()["containers"]:
        assert not {p["containerPort"] for p in container.get("ports", [])} & private, container["name"]
    for (kind, name), r in resources.items():
        if kind == "Service":
            assert not {p["port"] for p in r["spec"]["ports"]} & private, name
    policies = [r for (kind, _), r in resources.items() if kind == "NetworkPolicy"]
    assert any(
        p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies
    ), "no default-deny policy"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule["ports"]}
            assert ports <= {GATEWAY_PORT, TS_PORTS["metrics"]}, ports
            if TS_PORTS["metrics"] in ports:
                assert rule.get("from"), "TorchServe metrics open to everyone"


def test_kserve_inferenceservice():
    (isvc,) = load_yaml_docs(KSERVE / "inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["runtime"] == "kserve-torchserve"
    assert model["protocolVersion"] in {"v1", "v2"}
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    assert {"cpu", "memory"} <= model["resources"]["requests"].keys()
    claim = re.fullmatch(r"pvc://([^/]+)/.*", model["storageUri"]).group(1)
    assert ("PersistentVolumeClaim", claim) in k8s_resources()
    built = re.search(r"-t (\S+)", (KSERVE / "Dockerfile").read_text()).group(1)
    assert model["image"] == built
    props = read_properties(KSERVE / "config.properties")
    assert props["model_store"] == "/mnt/models/model-store"
    assert port_of(props["inference_address"]) == 8085 and "127.0.0.1" in props["management_address"]
    assert props.get("enable_model_api", "false") == "false"
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == len(snapshot["models"]) == 1
    (versions,) = snapshot["models"].values()
    assert all(re.fullmatch(r"yolo_v[\d.]+\.mar", v["marName"]) for v in versions.values())


# KServe deployment modes and autoscalers, as of KServe v0.15 (pkg/constants/constants.go and the
# webhook in pkg/apis/serving/v1beta1/inference_service_validation.go); v0.16+ renames the modes
# Knative and Standard and still accepts the old names.
KSERVE_MODE = "serving.kserve.io/deploymentMode"
KSERVE_AUTOSCALER = "serving.kserve.io/autoscalerClass"  # read in RawDeployment only
KNATIVE_CLASS = "autoscaling.knative.dev/class"  # read in Serverless only
SERVERLESS_MODES = {"Serverless", "Knative"}
RAW_MODES = {"RawDeployment", "Standard"}
RAW_AUTOSCALERS = {"hpa", "keda", "external", "none"}  # "none" from v0.16
HPA_METRICS = {"cpu", "memory"}  # KServe's AutoscalerAllowedHPAMetricsList
KPA_METRICS = {"concurrency", "rps"}  # KServe's AutoscalerAllowedKPAMetricsList


def kserve_problems(isvc: dict) -> list[str]:
    """Deployment-mode/autoscaler combinations KServe rejects or silently ignores.

    Serverless (the default this checks for when no deploymentMode annotation is given; the
    cluster's inferenceservice-config sets it, "Serverless" as shipped) scales with Knative's KPA
    on concurrency or rps; CPU or memory needs Knative's HPA class. RawDeployment scales with a
    Kubernetes HPA on cpu or memory, or with KEDA (metrics under autoScaling, no scaleMetric), or
    with an external autoscaler; canary traffic splitting needs Knative revisions.
    """
    annotations = isvc.get("metadata", {}).get("annotations") or {}
    mode = annotations.get(KSERVE_MODE, "Serverless")
    problems = []
    if mode not in SERVERLESS_MODES | RAW_MODES:
        return [f"deploymentMode {mode!r} is neither Serverless nor RawDeployment"]
    raw = mode in RAW_MODES
    autoscaler = annotations.get(KSERVE_AUTOSCALER, "hpa")
    knative_hpa = annotations.get(KNATIVE_CLASS, "kpa.autoscaling.knative.dev") == "hpa.autoscaling.knative.dev"
    if raw and autoscaler not in RAW_AUTOSCALERS:
        problems.append(f"{KSERVE_AUTOSCALER} {autoscaler!r} is not one of {sorted(RAW_AUTOSCALERS)}")
    if not raw and KSERVE_AUTOSCALER in annotations:
        problems.append(f"{KSERVE_AUTOSCALER} is ignored in {mode} mode (Knative uses {KNATIVE_CLASS})")
    for name, component in isvc.get("spec", {}).items():
        if not isinstance(component, dict):
            continue
        metric = component.get("scaleMetric")
        if raw and "canaryTrafficPercent" in component:
            problems.append(f"{name}: canaryTrafficPercent needs Serverless mode (Knative revisions), not {mode}")
        if raw and autoscaler == "hpa" and (metric or "cpu") not in HPA_METRICS:
            problems.append(f"{name}: scaleMetric {metric!r} needs Knative's KPA; the HPA of {mode} takes cpu/memory")
        if raw and autoscaler == "keda" and metric is not None:
            problems.append(f"{name}: KEDA takes its metrics from autoScaling.metrics, not scaleMetric {metric!r}")
        if not raw and not knative_hpa and (metric or "concurrency") not in KPA_METRICS:
            problems.append(f"{name}: scaleMetric {metric!r} in {mode} mode: Knative's KPA scales on concurrency/rps")
        if not raw and knative_hpa and (metric or "cpu") not in HPA_METRICS:
            problems.append(f"{name}: scaleMetric {metric!r} with Knative's HPA class: cpu/memory only")
    return problems


def test_kserve_autoscaling_matches_deployment_mode():
    (isvc,) = load_yaml_docs(KSERVE / "inferenceservice.yaml")
    # The mode is stated, not left to the cluster's default.
    assert isvc["metadata"]["annotations"][KSERVE_MODE] in SERVERLESS_MODES | RAW_MODES
    assert kserve_problems(isvc) == []
    predictor = isvc["spec"]["predictor"]
    if predictor.get("scaleMetric") == "concurrency":
        # The target is one pod's in-service capacity: TorchServe workers x batch size.
        (versions,) = json.loads(read_properties(KSERVE / "config.properties")["model_snapshot"])["models"].values()
        (model,) = versions.values()
        assert model["minWorkers"] == model["maxWorkers"]
        assert predictor["scaleTarget"] == model["maxWorkers"] * model["batchSize"]


def isvc_of(annotations: dict[str, str], **predictor) -> dict:
    return {"metadata": {"name": "t", "annotations": annotations}, "spec": {"predictor": {"model": {}, **predictor}}}


RAW = {KSERVE_MODE: "RawDeployment"}
SERVERLESS = {KSERVE_MODE: "Serverless"}


@pytest.mark.parametrize(
    ("isvc", "expected"),
    [
        pytest.param(isvc_of({}, scaleMetric="cpu", scaleTarget=70), "KPA", id="old-manifest-default-mode-cpu"),
        pytest.param(isvc_of(SERVERLESS, scaleMetric="cpu"), "KPA", id="serverless-cpu"),
        pytest.param(isvc_of(SERVERLESS, scaleMetric="memory"), "KPA", id="serverless-memory"),
        pytest.param(isvc_of({KSERVE_MODE: "Knative"}, scaleMetric="cpu"), "KPA", id="knative-cpu"),
        pytest.param(
            isvc_of({**SERVERLESS, KSERVE_AUTOSCALER: "hpa"}, scaleMetric="cpu"), "ignored", id="serverless-kserve-hpa"
        ),
        pytest.param(isvc_of(RAW, canaryTrafficPercent=10), "canaryTrafficPercent", id="raw-canary"),
        pytest.param(isvc_of({KSERVE_MODE: "Standard"}, canaryTrafficPercent=10), "canary", id="standard-canary"),
        pytest.param(isvc_of(RAW, scaleMetric="concurrency"), "KPA", id="raw-concurrency"),
        pytest.param(isvc_of({**RAW, KSERVE_AUTOSCALER: "hpa"}, scaleMetric="rps"), "KPA", id="raw-hpa-rps"),
        pytest.param(
            isvc_of({**RAW, KSERVE_AUTOSCALER: "keda"}, scaleMetric="concurrency"), "KEDA", id="raw-keda-metric"
        ),
        pytest.param(isvc_of({**RAW, KSERVE_AUTOSCALER: "kpa"}), "not one of", id="raw-kpa-class"),
        pytest.param(isvc_of({KSERVE_MODE: "Serverles"}), "neither", id="misspelt-mode"),
    ],
)
def test_kserve_problems_flags_mismatches(isvc, expected):
    problems = kserve_problems(isvc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "isvc",
    [
        pytest.param(isvc_of(SERVERLESS, scaleMetric="concurrency", canaryTrafficPercent=10), id="serverless-canary"),
        pytest.param(isvc_of({}, scaleMetric="rps"), id="default-mode-rps"),
        pytest.param(
            isvc_of({KNATIVE_CLASS: "hpa.autoscaling.knative.dev"}, scaleMetric="cpu"), id="serverless-knative-hpa-cpu"
        ),
        pytest.param(isvc_of(RAW, scaleMetric="cpu", scaleTarget=70), id="raw-hpa-cpu"),
        pytest.param(isvc_of({**RAW, KSERVE_AUTOSCALER: "keda"}), id="raw-keda"),
        pytest.param(isvc_of({**RAW, KSERVE_AUTOSCALER: "external"}, scaleMetric="concurrency"), id="raw-external"),
    ],
)
def test_kserve_problems_accepts_matching_combinations(isvc):
    assert kserve_problems(isvc) == []


PER_MODEL = {  # series that carry the model's name, and the label it is under
    "gateway_predictions_total": "model",
    "gateway_upstream_duration_seconds_bucket": "model",
    "gateway_detections_total": "model",
    "ts_inference_requests_total": "model_name",
    "ts_queue_latency_microseconds": "model_name",
    "ts_inference_latency_microseconds": "model_name",
    "PredictionTime": "ModelName",
}


def test_dashboard_chooses_the_model():
    dashboard = json.loads((DASHBOARDS / "yolo-serving.json").read_text())
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "model" and variable["includeAll"] and variable["multi"]
    assert variable["query"]["query"] == "label_values(gateway_predictions_total, model)"
    for expr in expressions(dashboard["panels"]):
        for name in promql_metric_names(expr) & set(PER_MODEL):
            assert re.search(rf'{name}\{{[^}}]*{PER_MODEL[name]}=~"\$model"', expr), expr


# --------------------------------------------------------------------------- Docker Swarm (run for real by
# tests/test_swarm_stack.py; these are the invariants a careless edit would break without failing that run at once)


@cache
def swarm_stack() -> dict:
    return yaml.safe_load((SWARM / "stack.yml").read_text())


@pytest.mark.parametrize("dockerfile", sorted(SWARM.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_swarm_hadolint(dockerfile):
    result = run(BIN / "hadolint", "--no-color", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_swarm_services_use_dns_round_robin_and_host_ports():
    # No IPVS on this kernel kind: a virtual IP or the routing mesh would never balance.
    services = swarm_stack()["services"]
    assert set(services) == {"replica", "balancer", "redis"}
    for name, service in services.items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        for port in service.get("ports", []):
            assert isinstance(port, dict) and port["mode"] == "host", f"{name} publishes {port} through the mesh"
    assert not services["replica"].get("ports") and not services["redis"].get("ports"), "only the balancer is published"
    assert "tasks.replica" in services["balancer"]["environment"]["REPLICA_TASKS"]


def test_swarm_updates_roll_one_at_a_time_start_first_and_roll_back():
    replica = swarm_stack()["services"]["replica"]
    update, back = replica["deploy"]["update_config"], replica["deploy"]["rollback_config"]
    assert update["parallelism"] == 1 and update["order"] == "start-first"  # ≈ maxSurge 1, maxUnavailable 0
    assert update["failure_action"] == "rollback" and update["max_failure_ratio"] == 0 and update["monitor"]
    assert back["parallelism"] == 1 and back["order"] == "start-first"
    assert "/health" in " ".join(replica["healthcheck"]["test"]), "healthy = ready to predict"
    assert "MODEL_VERSION" in replica["environment"], "the version is part of the spec"
    assert replica["environment"]["GATEWAY_STATE_STORE"].startswith("redis://redis:"), "replicas share one store"


def test_swarm_replica_drains_within_its_stop_grace_period():
    replica = swarm_stack()["services"]["replica"]
    env = replica["environment"]
    drain, finish = float(env["GATEWAY_SHUTDOWN_DRAIN_S"]), float(env["GATEWAY_SHUTDOWN_TIMEOUT_S"])
    grace = float(replica["stop_grace_period"].removesuffix("s"))
    assert drain >= 2, "HAProxy checks every second and marks a replica down after one failed check"
    assert drain + finish < grace, "Docker would SIGKILL the replica before its in-flight requests finish"
    config = (SWARM / "haproxy.cfg").read_text()
    assert re.search(r"default-server check inter 1s fall 1", config)
    assert "on-marked-down shutdown-sessions" not in config, "a draining replica's requests must finish"
    entrypoint = (SWARM / "replica.Dockerfile").read_text()
    assert '"tini", "--",' in entrypoint and "-g" not in entrypoint.split("ENTRYPOINT")[1], (
        "SIGTERM must reach the entrypoint alone, which stops TorchServe only after the gateway has drained"
    )


def test_swarm_balancer_terminates_tls_with_the_operators_certificate():
    balancer = swarm_stack()["services"]["balancer"]
    assert balancer["secrets"] == [{"source": "tls_pem", "target": "tls.pem", "mode": 0o400}]
    assert swarm_stack()["secrets"]["tls_pem"]["file"].startswith("${TLS_PEM:?")
    config = (SWARM / "haproxy.cfg").read_text()
    assert "ssl crt /run/secrets/tls.pem" in config and "option forwardfor" in config
    assert "balance leastconn" in config and "option httpchk GET /health" in config
    assert re.search(r"^\s+user haproxy$", config, re.M), "HAProxy drops root once it has read the key"
