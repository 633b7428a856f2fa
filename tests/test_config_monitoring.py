"""Offline checks of monitoring/: Prometheus scrapes the gateway and TorchServe, Grafana is provisioned as
Compose mounts it, and every metric the dashboards query is one the gateway or TorchServe exports (the one
live test, marked integration, checks that against a running stack)."""

from __future__ import annotations

import importlib.util
import json
import mimetypes
import re
from pathlib import Path

import pytest
import yaml

from tests.config_helpers import (
    DASHBOARDS,
    GATEWAY_PORT,
    MONITORING,
    ROOT,
    TS_PORTS,
    compose,
    named_mounts,
    yamllint,
)

TS_METRICS_YAML = Path(importlib.util.find_spec("ts").origin).parent / "configs" / "metrics.yaml"

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


def test_yamllint():
    result = yamllint(MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


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
