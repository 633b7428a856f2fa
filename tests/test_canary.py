"""gateway/canary.py: which version an unpinned request goes to, and how the canary file is re-read."""

from __future__ import annotations

import json
import os
import random

from gateway.canary import Canaries, Canary, CanaryFile, choose


def test_choose_sends_exactly_the_share_below_percent():
    canary = Canary("2.0", 20)
    assert choose(canary, 0.0) == "2.0"
    assert choose(canary, 0.1999) == "2.0"
    assert choose(canary, 0.2) is None
    assert choose(canary, 0.9999) is None
    assert choose(None, 0.0) is None


def test_seeded_draws_give_the_configured_share(tmp_path):
    path = tmp_path / "canary.json"
    path.write_text(json.dumps({"version": "2.0", "percent": 20}))
    picker = CanaryFile(path, random.Random(1234))
    picks = [picker.pick() for _ in range(10_000)]
    assert set(picks) == {"2.0", None}
    assert 0.19 < picks.count("2.0") / len(picks) < 0.21
    replay = CanaryFile(path, random.Random(1234))
    assert [replay.pick() for _ in range(10_000)] == picks


def test_no_file_or_no_setting_means_no_canary(tmp_path):
    assert CanaryFile(None).pick() is None
    assert CanaryFile(tmp_path / "missing.json").pick() is None


def test_file_changes_are_picked_up_and_removal_stops_the_canary(tmp_path):
    path = tmp_path / "canary.json"
    picker = CanaryFile(path, random.Random(0))
    assert picker.current() is None
    path.write_text(json.dumps({"version": "2.0", "percent": 20}))
    assert picker.current() == Canary("2.0", 20.0)
    path.write_text(json.dumps({"version": "3.0", "percent": 100}))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert picker.current() == Canary("3.0", 100.0)
    assert picker.pick() == "3.0"
    path.unlink()
    assert picker.current() is None and picker.pick() is None


def test_unchanged_file_is_not_parsed_again(tmp_path):
    path = tmp_path / "canary.json"
    path.write_text(json.dumps({"version": "2.0", "percent": 50}))
    picker = CanaryFile(path)
    first = picker.current()
    stat = path.stat()
    path.write_text(json.dumps({"version": "9.9", "percent": 50}))  # same size: restore the mtime, as if untouched
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert picker.current() is first


def test_a_garbled_file_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "canary.json"
    path.write_text("{not json")
    assert CanaryFile(path).pick() is None
    path.write_text(json.dumps({"percent": 20}))
    assert CanaryFile(path).pick() is None


def test_each_model_has_its_own_canary(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "canary.json").write_text(json.dumps({"version": "1.1", "percent": 100}))
    canaries = Canaries(tmp_path)
    assert canaries.pick("parts") == "1.1"
    assert canaries.pick("yolo") is None
    assert Canaries(None).pick("parts") is None
