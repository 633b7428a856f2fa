"""The containerised stack, for real: `make compose-test` run as part of `make test`.

containers/compose_check.py builds both images, starts docker-compose.yml on a real
Docker engine (installing and starting Debian's where none answers), exercises the
containerised gateway and tears everything down. Where no engine can be started the
script exits non-zero and this test fails: it is never skipped.
"""

from __future__ import annotations

import pytest

from containers.compose_check import CHECKS, PROJECT
from tests.helpers import run_container_proof

pytestmark = [pytest.mark.integration, pytest.mark.containers]


def test_compose_stack_builds_starts_passes_every_check_and_tears_down():
    run_container_proof(
        ["bash", "scripts/compose_test.sh"],
        [f"PASS {name}:" for name in CHECKS],
        "stack torn down",
        f"com.docker.compose.project={PROJECT}",
    )
