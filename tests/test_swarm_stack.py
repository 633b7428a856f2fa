"""Replicas on a real Docker Swarm: the short version of `make swarm-test`, run by `make test`.

2 replicas of gateway + TorchServe behind HAProxy (TLS) with Redis: HTTPS answers as HTTP,
GET /models alike on every replica, a rolling update v1.0 -> v2.0 and a rollback under load
with no failed request, and one replica killed under load (failures no more than it had in
flight, and replaced). Where no Docker engine can be started it fails: it is never skipped.
"""

from __future__ import annotations

import subprocess

import pytest

from containers.swarm_check import ROOT

pytestmark = pytest.mark.integration

TARGETS = (
    "HTTPS through the balancer",
    "GET /models through the balancer",
    "rolling update v1.0 → v2.0 of 2 replicas",
    "`docker service update --rollback` under load",
    "`docker kill` of one replica under load",
)


def test_swarm_replicas_update_roll_back_and_survive_a_kill_with_nothing_lost():
    result = subprocess.run(
        [".venv/bin/python", "-m", "scripts.swarm", "test", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    for target in TARGETS:
        assert f"PASS {target}" in output, output[-20000:]
    assert "stack removed" in output
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=com.docker.stack.namespace=yoloswarmtest"],
        capture_output=True,
        text=True,
    )
    assert left.stdout.strip() == "", f"containers left behind: {left.stdout}"
