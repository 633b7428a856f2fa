"""Offline checks of the Kubernetes manifests in k8s/: kubernetes-validate, one namespace, probes, resources
and security, references that resolve, the model store and token volumes, and a management API that stays
private (the KServe example is tests/test_config_kserve.py's)."""

from __future__ import annotations

import pytest

from tests.config_helpers import (
    BIN,
    GATEWAY_PORT,
    K8S,
    K8S_MANIFESTS,
    KSERVE,
    ROOT,
    TS_HOME,
    TS_PORTS,
    k8s_resources,
    run,
    yamllint,
)


def test_yamllint():
    result = yamllint(K8S)
    assert result.returncode == 0, result.stdout + result.stderr


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
