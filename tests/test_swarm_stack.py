"""Replicas on a real Docker Swarm: the short version of `make swarm-test`, run by `make test`.

2 replicas of gateway + TorchServe behind HAProxy (TLS) with Redis: HTTPS answers as HTTP,
GET /models alike on every replica, a rolling update v1.0 -> v2.0 and a rollback under load
with no failed request, and one replica killed under load (failures no more than it had in
flight, and replaced). Where no Docker engine can be started it fails: it is never skipped.
"""

from __future__ import annotations

import pytest

from tests.helpers import run_container_proof

pytestmark = [pytest.mark.integration, pytest.mark.containers]

TARGETS = (
    "HTTPS through the balancer",
    "GET /models through the balancer",
    "rolling update v1.0 → v2.0 of 2 replicas",
    "`docker service update --rollback` under load",
    "`docker kill` of one replica under load",
)


def test_swarm_replicas_update_roll_back_and_survive_a_kill_with_nothing_lost():
    run_container_proof(
        [".venv/bin/python", "-m", "scripts.swarm", "test", "--quick"],
        [f"PASS {target}" for target in TARGETS],
        "stack removed",
        "com.docker.stack.namespace=yoloswarmtest",
        timeout=1800,
    )
