"""`make test`'s lanes (tests/lanes.py) hold every test exactly once, whatever markers it carries."""

from __future__ import annotations

from itertools import chain, combinations

import pytest
from _pytest.mark.expression import Expression

from tests.helpers import ROOT
from tests.lanes import GATE, LANES, TRACKS, summary_counts


def declared_markers() -> list[str]:
    import tomllib

    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    return [line.split(":")[0] for line in markers]


def test_every_combination_of_markers_lands_in_exactly_one_lane():
    markers = declared_markers()
    assert set(markers) >= {"integration", "packaging", "training", "containers", "calibration", "releases"}
    compiled = {lane: Expression.compile(expression) for lane, expression in LANES.items()}
    for carried in chain.from_iterable(combinations(markers, n) for n in range(len(markers) + 1)):
        lanes = [lane for lane, expr in compiled.items() if expr.evaluate(lambda name, c=carried: name in c)]
        assert len(lanes) == 1, f"a test marked {carried or 'nothing'} runs in {lanes or 'no lane'}"


def test_make_test_runs_every_lane_once_the_fast_one_first():
    lanes = list(chain.from_iterable(TRACKS))
    assert sorted(lanes) == sorted(LANES), "every lane once, in one track"
    assert GATE == "fast" and all(track.index(GATE) == 0 for track in TRACKS if GATE in track)


@pytest.mark.parametrize(
    ("closing", "counts"),
    [
        ("==== 351 passed, 1 skipped, 198 deselected, 1 warning in 51.53s ====", {"passed": 351, "skipped": 1}),
        ("= 1 failed, 142 passed, 402 deselected, 1 error in 990.44s (0:16:30) =", {"failed": 1, "errors": 1}),
        ("no closing line: the lane crashed", {}),
    ],
)
def test_a_lane_s_counts_come_from_pytest_s_closing_line(closing, counts):
    found = summary_counts(f"tests/test_x.py ....\n{closing}\n")
    assert {k: found[k] for k in counts} == counts and (counts or found == {})
