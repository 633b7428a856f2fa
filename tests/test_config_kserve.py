"""Offline checks of the KServe example (k8s/kserve/): the InferenceService, its TorchServe configuration, and
deployment-mode/autoscaler combinations KServe rejects or silently ignores (``kserve_problems``)."""

from __future__ import annotations

import json
import re

import pytest

from tests.config_helpers import KSERVE, k8s_resources, load_yaml_docs, port_of, read_properties


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
