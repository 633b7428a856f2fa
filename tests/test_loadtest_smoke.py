"""A 10-second Locust smoke of `make loadtest` against the session's real stack."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration


def test_locust_smoke_has_no_failures(stack, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.loadtest",
            "--host",
            stack.gateway_url,
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--duration",
            "10s",
            "--user-class",
            "MixedUser",
            "--run-dir",
            str(stack.run_dir),
            "--reports",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (tmp_path / "loadtest_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0
    assert {"/predict", "/health"} <= rows.keys()
    assert (tmp_path / "loadtest.html").stat().st_size > 0
    memory = json.loads((tmp_path / "loadtest_memory.json").read_text())["memory"]
    assert memory["workers"]["processes"] >= 1 and memory["workers"]["peak_rss_mib"] > 0
    assert memory["gateway"]["peak_rss_mib"] > 0
