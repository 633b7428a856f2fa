"""Shared fixtures: the real TorchServe + gateway, started once per session on free ports.

What tests share besides fixtures is in tests/helpers.py.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from gateway.state import RedisStore, StateError
from operations.stack import Stack, free_port, running, start_gateway, stop_service, wait_until
from tests.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    COUNTS,
    GroundTruth,
    TestStack,
    answers,
    load_ground_truth,
    package,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the packaged model store builds archives, whatever its module says."""
    for item in items:
        if "model_store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.packaging)


def pytest_terminal_summary(terminalreporter) -> None:
    """How many archives this run built, and how many times one was hard-linked from the memo instead."""
    if COUNTS["built"] or COUNTS["linked"]:
        terminalreporter.write_line(
            f"archives: {COUNTS['built']} built, {COUNTS['linked']} linked from this run's memo (tests/helpers.package)"
        )


@pytest.fixture(scope="session")
def ground_truth() -> list[GroundTruth]:
    return load_ground_truth()


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A private model store holding yolo_v1.0.mar in packaging's default format, as `make up` serves it."""
    store = tmp_path_factory.mktemp("model-store")
    package(store, "1.0")
    return store


@pytest.fixture(scope="session")
def stack(model_store, tmp_path_factory):
    """TorchServe (token auth on) and the gateway, as `make up` runs them, on free ports."""
    instance = TestStack.private(tmp_path_factory.mktemp("run"), model_store)
    with running(instance, "1.0"):
        yield instance


@pytest.fixture
def extra_gateway(stack, tmp_path):
    """Start another gateway process in front of the session's TorchServe, with extra settings.

    Returns the new gateway's Stack (``.gateway_url``), so a test can also stop it.
    """
    started = []

    def start(**env: str) -> Stack:
        instance = dataclasses.replace(
            stack,
            run_dir=tmp_path / f"gateway{len(started)}",
            gateway_port=free_port(),
            gateway_env={"GATEWAY_TS_KEY_FILE": str(stack.key_file), **env},
        )
        instance.run_dir.mkdir()
        pid = start_gateway(instance)
        started.append(instance)
        live = f"{instance.gateway_url}/health/live"
        wait_until(lambda: answers(live), "extra gateway", 30, pid, instance.log_dir / "gateway.log")
        return instance

    yield start
    for instance in started:
        stop_service(instance, "gateway")


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port, nothing persisted."""
    if not shutil.which(REDIS_SERVER):
        pytest.fail("redis-server is missing: `make test` installs it (scripts/ensure_packages.sh)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            RedisStore(url).close()
            return True
        except StateError:
            return False

    wait_until(answers, "redis-server", 30, server.pid)
    yield url
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_packages.sh (make test does)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile per test (empty local storage); uncaught script errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    context.close()
    assert not script_errors, script_errors
