"""Offline checks of the Docker Swarm stack (docker/swarm/), run for real by tests/test_swarm_stack.py: these
are the invariants a careless edit would break without failing that run at once."""

from __future__ import annotations

import re
from functools import cache

import pytest
import yaml

from tests.config_helpers import BIN, SWARM, run, yamllint


def test_yamllint():
    result = yamllint(SWARM / "stack.yml")
    assert result.returncode == 0, result.stdout + result.stderr


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
