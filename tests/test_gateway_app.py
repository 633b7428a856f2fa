"""The gateway's prediction routes, checked without a server."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from gateway.routes import predict


def dependency_calls(dependant) -> list:
    calls = []
    for sub in dependant.dependencies:
        calls += [sub.call, *dependency_calls(sub)]
    return calls


def is_async(call) -> bool:
    """A coroutine function, or an instance whose ``__call__`` is one (FastAPI's security schemes)."""
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def test_prediction_routes_stay_on_the_event_loop():
    """FastAPI runs a plain ``def`` endpoint or dependency in its thread pool: a hand-off per request."""
    routes = [r for r in predict.router.routes if isinstance(r, APIRoute)]
    assert {r.path for r in routes} == {
        "/predict",
        "/predict/batch",
        "/models/{model}/predict",
        "/models/{model}/predict/batch",
    }
    for route in routes:
        calls = [route.dependant.call, *dependency_calls(route.dependant)]
        assert len(calls) >= 3, "the endpoint, the API-key check and its header"
        assert [c for c in calls if not is_async(c)] == [], route.path
