"""The drift alert rules, proved by Prometheus' own rule tester (Debian's prometheus package ships promtool)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import ROOT

RULES = ROOT / "monitoring" / "rules"
TESTS = ROOT / "monitoring" / "rules-tests"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run scripts/ensure_packages.sh (make test does)")
    return found


def test_the_rules_are_valid(promtool):
    result = subprocess.run([promtool, "check", "rules", *map(str, sorted(RULES.glob("*.yml")))], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@pytest.mark.parametrize("unit", sorted(p.name for p in TESTS.glob("*.test.yml")))
def test_the_rules_fire_as_their_unit_tests_say(promtool, unit):
    result = subprocess.run([promtool, "test", "rules", unit], cwd=TESTS, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_prometheus_in_compose_loads_the_rules():
    config = (ROOT / "monitoring" / "prometheus.yml").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "/etc/prometheus/rules/*.yml" in config
    assert "./monitoring/rules:/etc/prometheus/rules:ro" in compose
