"""The containerised stack, for real: `make compose-test` run as part of `make test`.

containers/compose_check.py builds both images, starts docker-compose.yml on a real
Docker engine (installing and starting Debian's where none answers), exercises the
containerised gateway and tears everything down. Where no engine can be started the
script exits non-zero and this test fails: it is never skipped.
"""

from __future__ import annotations

import subprocess

import pytest

from containers.compose_check import CHECKS, PROJECT
from tests.helpers import ROOT

pytestmark = pytest.mark.integration


def test_compose_stack_builds_starts_passes_every_check_and_tears_down():
    result = subprocess.run(
        ["bash", "scripts/compose_test.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    for name in CHECKS:
        assert f"PASS {name}:" in output, output[-20000:]
    assert "stack torn down" in output
    if "stopping the dockerd started here" not in output:  # the engine it used still runs: nothing may be left
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert left.stdout.strip() == "", f"containers left behind: {left.stdout}"
