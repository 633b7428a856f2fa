"""Offline checks of docker-compose.yml: services, published ports, health-ordered start, pinned images, the
model store and token volumes, and TorchServe kept on an internal network."""

from __future__ import annotations

import re

from tests.config_helpers import (
    COMPOSE,
    DOCKERFILES,
    GATEWAY_PORT,
    GRAFANA_PORT,
    ROOT,
    TS_HOME,
    TS_PORTS,
    compose,
    named_mounts,
    yamllint,
)


def test_yamllint():
    result = yamllint(COMPOSE, ROOT / ".yamllint.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


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
