"""gateway/canary.py: which version an unpinned request goes to, read from the state store on every request."""

from __future__ import annotations

import random

import pytest

from gateway.canary import Canaries, Canary, choose
from gateway.state import SQLiteStore, canary_key


def test_choose_sends_exactly_the_share_below_percent():
    canary = Canary("2.0", 20)
    assert choose(canary, 0.0) == "2.0"
    assert choose(canary, 0.1999) == "2.0"
    assert choose(canary, 0.2) is None
    assert choose(canary, 0.9999) is None
    assert choose(None, 0.0) is None


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(tmp_path / "state.db")
    yield opened
    opened.close()


def test_seeded_draws_give_the_configured_share(store):
    store.put(canary_key("yolo"), {"version": "2.0", "percent": 20})
    picker = Canaries(store, random.Random(1234))
    picks = [picker.pick("yolo") for _ in range(10_000)]
    assert set(picks) == {"2.0", None}
    assert 0.19 < picks.count("2.0") / len(picks) < 0.21
    replay = Canaries(store, random.Random(1234))
    assert [replay.pick("yolo") for _ in range(10_000)] == picks


def test_no_canary_or_no_store_means_the_default(store):
    assert Canaries(None).pick("yolo") is None
    assert Canaries(store).pick("yolo") is None


def test_changes_by_another_process_are_seen_on_the_next_request(store, tmp_path):
    picker = Canaries(store, random.Random(0))
    deployer = SQLiteStore(tmp_path / "state.db")  # what scripts/deploy.sh opens: the same file, another connection
    deployer.put(canary_key("yolo"), {"version": "2.0", "percent": 20})
    assert picker.current("yolo") == Canary("2.0", 20.0)
    deployer.put(canary_key("yolo"), {"version": "3.0", "percent": 99.9})
    assert picker.current("yolo") == Canary("3.0", 99.9)
    deployer.delete(canary_key("yolo"))
    assert picker.current("yolo") is None and picker.pick("yolo") is None
    deployer.close()


@pytest.mark.parametrize(
    "stored",
    [{"percent": 20}, {"version": "2.0", "percent": "lots"}, {"version": "2.0", "percent": 100}, ["2.0", 20]],
)
def test_a_garbled_canary_is_ignored_not_fatal(store, stored, caplog):
    store.put(canary_key("yolo"), stored)
    picker = Canaries(store)
    assert [picker.pick("yolo") for _ in range(3)] == [None, None, None]
    assert len([r for r in caplog.records if "ignoring the canary" in r.message]) == 1, "logged once, not per request"
    with pytest.raises(ValueError, match="not a canary|between 0 and 100"):
        Canary.parse(stored)


def test_each_model_has_its_own_canary(store):
    Canaries(store).set("parts", Canary("1.1", 50))
    canaries = Canaries(store, random.Random(3))
    assert {canaries.pick("parts") for _ in range(50)} == {"1.1", None}
    assert canaries.pick("yolo") is None
