"""The state store (gateway/state.py) on SQLite and on a real Redis, its migration from the old files,
and the operator routes (/admin) that change it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest

from gateway.canary import Canary
from gateway.main import create_app
from gateway.settings import Settings
from gateway.state import RedisStore, SQLiteStore, StateError, canary_key, history_log, open_store
from operations.archives import DeployError
from operations.history import print_history, read_canary, read_history, record, write_canary
from operations.stack import Stack, free_port

ADMIN_KEY = "operator-secret"


def exercise(store) -> None:
    """The six calls, as the canary, the deploy history and the captures' manifest use them."""
    assert store.get("canary/yolo") is None and store.entries("history/yolo") == []
    store.put("canary/yolo", {"version": "2.0", "percent": 20.0})
    store.put("canary/yolo", {"version": "2.0", "percent": 50.0})
    store.put("canary/parts", {"version": "1.1", "percent": 5.0})
    assert store.get("canary/yolo") == {"version": "2.0", "percent": 50.0}
    for n in range(3):
        store.append("history/yolo", {"n": n, "action": "deploy"})
    store.append("history/parts", {"n": 9})
    assert [e["n"] for e in store.entries("history/yolo")] == [0, 1, 2], "oldest first, per log"
    assert store.delete("canary/yolo") is True and store.delete("canary/yolo") is False
    assert store.get("canary/yolo") is None and store.get("canary/parts") == {"version": "1.1", "percent": 5.0}
    for key in ("capture/yolo/b2", "capture/yolo/a1", "capture/yolo2/c3", "capture/y*lo/d4"):
        store.put(key, {"id": key[-2:]})
    assert store.scan("capture/yolo/") == [("capture/yolo/a1", {"id": "a1"}), ("capture/yolo/b2", {"id": "b2"})]
    assert [key for key, _ in store.scan("capture/y*")] == ["capture/y*lo/d4"], "a prefix is matched literally"
    assert store.scan("nothing/") == []


def test_sqlite_store_keeps_state_across_restarts_and_processes(tmp_path):
    path = tmp_path / "state" / "state.db"
    store = open_store(path)
    assert isinstance(store, SQLiteStore)
    exercise(store)
    other = open_store(path)  # the gateway's connection while a deploy writes
    other.append("history/yolo", {"n": 3})
    store.close()
    other.close()
    reopened = open_store(path)
    assert [e["n"] for e in reopened.entries("history/yolo")] == [0, 1, 2, 3]
    assert reopened.get("canary/parts") == {"version": "1.1", "percent": 5.0}
    reopened.close()


def test_an_unusable_store_location_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StateError, match="cannot open the state store .*file/state.db"):
        open_store(tmp_path / "file" / "state.db")
    with pytest.raises(StateError, match=r"cannot reach the state store redis://127.0.0.1:\d+"):
        open_store(f"redis://127.0.0.1:{free_port()}/0")


@pytest.mark.integration
def test_redis_store_answers_the_same_calls(redis_url):
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    exercise(store)
    shared = open_store(redis_url)  # a second gateway
    assert shared.get("canary/parts") == {"version": "1.1", "percent": 5.0}
    store.close()
    shared.close()


@pytest.mark.integration
def test_deploy_state_on_redis(redis_url, tmp_path):
    stack = Stack(run_dir=tmp_path, model_store=tmp_path, model_name="parts", state_store=redis_url)
    write_canary(stack, Canary("3.0", 10))
    assert read_canary(stack) == Canary("3.0", 10.0)
    record(stack, "canary", "3.0", "2.0", percent=10.0)
    assert read_history(stack)[-1]["action"] == "canary"
    write_canary(stack, None)
    assert read_canary(stack) is None


def test_old_history_and_canary_files_migrate_once(tmp_path):
    stack = Stack(run_dir=tmp_path, model_store=tmp_path)
    folder = stack.state_dir / "yolo"
    folder.mkdir(parents=True)
    old = [
        {"when": "2026-11-01T10:00:00+00:00", "who": "ops", "action": "deploy", "version": "1.0", "previous": None,
         "sha256": "ab" * 32, "result": "ok"},
        {"when": "2026-11-02T10:00:00+00:00", "who": "ops", "action": "canary", "version": "2.0", "previous": "1.0",
         "sha256": "cd" * 32, "result": "ok", "percent": 20.0},
    ]  # fmt: skip
    (folder / "deploy_history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in old))
    (folder / "canary.json").write_text(json.dumps({"version": "2.0", "percent": 20}))
    assert read_history(stack) == old
    assert read_canary(stack) == Canary("2.0", 20.0)
    assert sorted(p.name for p in folder.iterdir()) == ["canary.json.migrated", "deploy_history.jsonl.migrated"]
    record(stack, "promote", "2.0", "1.0")
    assert [e["action"] for e in read_history(stack)] == ["deploy", "canary", "promote"], "imported once"
    lines = []
    print_history(stack, out=lines.append)
    assert len(lines) == 3 and "canary   2.0" in lines[1] and "percent=20.0" in lines[1]


def test_a_garbled_old_canary_file_is_kept_not_imported(tmp_path, capsys):
    stack = Stack(run_dir=tmp_path, model_store=tmp_path)
    (stack.state_dir / "yolo").mkdir(parents=True)
    (stack.state_dir / "yolo" / "canary.json").write_text("{half")
    assert read_canary(stack) is None
    assert "is not a canary, not migrated" in capsys.readouterr().err
    assert (stack.state_dir / "yolo" / "canary.json.migrated").read_text() == "{half"


def admin_call(app, method: str, path: str, key: str | None = ADMIN_KEY, **kwargs) -> httpx.Response:
    async def call() -> httpx.Response:
        headers = {"X-Admin-Key": key} if key else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(call())


def test_admin_routes_need_a_configured_operator_key(tmp_path):
    closed = create_app(Settings(state_store=str(tmp_path / "state.db"), api_keys="client-key"))
    for method in ("GET", "PUT", "DELETE"):
        refused = admin_call(closed, method, "/admin/models/yolo/canary", json={"percent": 5})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "admin_disabled" and "GATEWAY_ADMIN_KEYS" in refused.text
    app = create_app(Settings(state_store=str(tmp_path / "state.db"), admin_keys=f"other, {ADMIN_KEY}"))
    for key in (None, "client-key", "operator-secreT"):
        refused = admin_call(app, "DELETE", "/admin/models/yolo/canary", key=key)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized", refused.text
    assert admin_call(app, "GET", "/admin/models/yolo/canary").json() == {
        "model": "yolo",
        "canary": None,
        "stopped": None,
    }


def test_an_operator_changes_and_stops_a_canary_and_the_history_says_so(tmp_path):
    path = tmp_path / "state.db"
    app = create_app(Settings(state_store=str(path), admin_keys=ADMIN_KEY))
    no_canary = admin_call(app, "PUT", "/admin/models/yolo/canary", json={"percent": 30})
    assert no_canary.status_code == 409 and "scripts/deploy.sh --model yolo" in no_canary.json()["error"]["message"]
    deployer = SQLiteStore(path)  # scripts/deploy.sh --canary, after the gate
    deployer.put(canary_key("yolo"), {"version": "2.0", "percent": 10.0})
    for bad in ({"percent": 0}, {"percent": 100}, {"percent": "half"}, {"percent": 30, "version": "3.0"}, {}):
        refused = admin_call(app, "PUT", "/admin/models/yolo/canary", json=bad)
        assert refused.status_code == 422 and refused.json()["status"] == "error", (bad, refused.text)
    assert admin_call(app, "PUT", "/admin/models/bad name/canary", json={"percent": 5}).status_code == 422
    changed = admin_call(app, "PUT", "/admin/models/yolo/canary", json={"percent": 30})
    assert changed.status_code == 200, changed.text
    assert changed.json()["canary"] == {"version": "2.0", "percent": 30.0}
    assert deployer.get(canary_key("yolo")) == {"version": "2.0", "percent": 30.0}
    stopped = admin_call(app, "DELETE", "/admin/models/yolo/canary").json()
    assert stopped == {"model": "yolo", "canary": None, "stopped": "2.0"}
    assert admin_call(app, "DELETE", "/admin/models/yolo/canary").json()["stopped"] is None, "idempotent"
    assert deployer.get(canary_key("yolo")) is None
    history = admin_call(app, "GET", "/admin/models/yolo/history").json()["entries"]
    assert [(e["action"], e["version"], e["who"]) for e in history] == [
        ("canary-share", "2.0", "gateway-admin"),
        ("canary-stop", "2.0", "gateway-admin"),
    ]
    assert history[0]["percent"] == 30.0 and history[0]["was"] == 10.0
    assert deployer.entries(history_log("yolo")) == history
    deployer.close()


def test_admin_routes_are_in_the_openapi_document_with_the_operator_key(tmp_path):
    schema = create_app(Settings(state_store=str(tmp_path / "state.db"))).openapi()
    assert {"/admin/models/{model}/canary", "/admin/models/{model}/history"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["AdminKey"] == {"type": "apiKey", "description": (
        "an operator key from GATEWAY_ADMIN_KEYS"), "in": "header", "name": "X-Admin-Key"}  # fmt: skip


def test_a_wrong_store_location_stops_the_gateway_and_the_deploy_tool_with_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    env = {**os.environ, "GATEWAY_STATE_STORE": str(tmp_path / "file" / "state.db")}
    gateway = subprocess.run(
        [sys.executable, "-m", "gateway.serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert gateway.returncode == 1 and "Traceback" not in gateway.stderr, gateway.stderr
    assert "error: cannot open the state store" in gateway.stderr and "GATEWAY_STATE_STORE" in gateway.stderr
    history = subprocess.run(
        [sys.executable, "-m", "scripts.deploy", "history", "--state-store", str(tmp_path / "file" / "state.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.returncode == 1 and "Traceback" not in history.stderr, history.stderr
    assert history.stderr.startswith("error: cannot open the state store"), history.stderr


def test_a_garbled_old_history_file_is_named_and_left_alone(tmp_path):
    stack = Stack(run_dir=tmp_path, model_store=tmp_path)
    old = stack.state_dir / "yolo" / "deploy_history.jsonl"
    old.parent.mkdir(parents=True)
    old.write_text('{"action": "deploy"}\n{half a line\n')
    with pytest.raises(DeployError, match="deploy_history.jsonl is not JSON lines"):
        read_history(stack)
    assert old.read_text() == '{"action": "deploy"}\n{half a line\n', "nothing moved or lost"
