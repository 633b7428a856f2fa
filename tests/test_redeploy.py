"""Redeploy, rollback and canary through scripts/deploy.sh and scripts/rollback.sh, under live traffic.

The integration tests share one private stack and run in file order, like an operator's
day: deploy 2.0 and roll back under load, refuse broken archives, survive a TorchServe
restart, then run a canary, promote it, and abort another.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from benchmarks.loadgen import Load
from gateway.canary import Canary
from operations.history import lineage, previous_version, read_canary, read_history
from operations.stack import free_ports, ready_workers, running, start_torchserve, stop_service, wait_until
from quality.gate_sets import gate_spec
from tests.helpers import ROOT, WEIGHTS, TestStack, package

CLIENTS = 8


def entry(action: str, version: str, previous: str | None, result: str = "ok") -> dict:
    return {"action": action, "version": version, "previous": previous, "result": result}


def test_rollback_walks_back_down_the_deploy_chain():
    history = [
        entry("deploy", "2.0", "1.0"),
        entry("refused", "9.0", "2.0", "refused"),
        entry("deploy", "3.0", "2.0"),
        entry("canary", "4.0", "3.0"),
    ]
    assert lineage(history) == ["1.0", "2.0", "3.0"]
    assert previous_version(history, "3.0") == "2.0"
    history.append(entry("rollback", "2.0", "3.0"))
    assert previous_version(history, "2.0") == "1.0", "a second rollback goes further back, not to 3.0 again"
    history.append(entry("rollback", "1.0", "2.0"))
    assert previous_version(history, "1.0") is None
    assert previous_version([], "1.0") is None


def blind_weights(path):
    """v1.0's weights with every class logit pushed to -30: loads and runs fine, detects nothing."""
    import torch
    from ultralytics import YOLO

    model = YOLO(str(WEIGHTS["1.0"]))
    with torch.no_grad():
        for branch in model.model.model[-1].cv3:
            branch[-1].bias.fill_(-30.0)
    model.save(str(path))
    return path


def unloadable_archive(source, dest, version: str) -> None:
    """A well-formed .mar of ``version`` whose serialized model is garbage: TorchServe's worker fails to load it."""
    with zipfile.ZipFile(source) as good, zipfile.ZipFile(dest, "w") as bad:
        weights = json.loads(good.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        for item in good.infolist():
            data = good.read(item.filename)
            if item.filename == weights:
                data = b"not a model" * 64
            elif item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version
                data = json.dumps(manifest).encode()
            bad.writestr(item, data)


@pytest.fixture(scope="module")
def rstack(tmp_path_factory):
    """A stack of its own serving 1.0; its store also holds 2.0, an ungated 6.0, an unloadable 7.0, a blind 8.0
    and a random 9.0."""
    store = tmp_path_factory.mktemp("redeploy-store")
    for version, weights in (("1.0", None), ("2.0", None), ("8.0", blind_weights(store.parent / "blind.pt"))):
        package(store, version, weights)
    assert package(store, "6.0", WEIGHTS["2.0"], gate_data=None).gate is None
    unloadable_archive(store / "yolo_v1.0.mar", store / "yolo_v7.0.mar", "7.0")
    (store / "yolo_v9.0.mar").write_bytes(os.urandom(200_000))
    with running(TestStack.private(tmp_path_factory.mktemp("redeploy-run"), store), "1.0") as instance:
        yield instance


def script(stack: TestStack, name: str, *args: str) -> subprocess.CompletedProcess:
    """Run scripts/<name>.sh against the private stack, pointed at it through the STACK_* variables."""
    env = {
        **os.environ,
        "STACK_RUN_DIR": str(stack.run_dir),
        "STACK_MODEL_STORE": str(stack.model_store),
        "STACK_INFERENCE_PORT": str(stack.inference_port),
        "STACK_MANAGEMENT_PORT": str(stack.management_port),
        "DEPLOY_DRAIN_S": "1",
    }
    cmd = ["bash", f"scripts/{name}.sh", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def serving(stack: TestStack) -> tuple[str | None, list[str]]:
    with stack.torchserve() as ts:
        return ts.default_version(stack.model_name), sorted(ts.loaded_versions(stack.model_name))


def test_a_private_stack_gets_distinct_ports_nothing_listens_on(tmp_path):
    """A private stack's six ports are asked for at once: none twice (a run once gave TorchServe's management
    and gRPC ports the same number, and that TorchServe never started)."""
    stack = TestStack.private(tmp_path, tmp_path)
    ports = [stack.inference_port, stack.management_port, stack.metrics_port, stack.gateway_port]
    ports += [stack.grpc_inference_port, stack.grpc_management_port]
    assert len(set(ports)) == 6
    many = free_ports(500)
    assert len(set(many)) == 500
    for port in many[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: nothing holds it any more


def test_scripts_explain_themselves():
    for name in ("deploy", "rollback"):
        result = subprocess.run(["bash", f"scripts/{name}.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0
        assert "--keep" in result.stdout and "STACK_RUN_DIR" in result.stdout
        assert name == "rollback" or ("--canary PERCENT" in result.stdout and "--promote" in result.stdout)


@pytest.mark.integration
@pytest.mark.releases
def test_deploy_then_rollback_under_load_drops_nothing(rstack):
    assert script(rstack, "rollback").returncode == 1, "nothing deployed yet: nothing to roll back to"
    with Load(rstack.gateway_url, rstack.sample_images, CLIENTS) as load:
        load.wait_for(2 * CLIENTS)
        before_deploy = time.monotonic()
        deployed = script(rstack, "deploy", "2.0")
        after_deploy = time.monotonic()
        load.wait_for(2 * CLIENTS, after=after_deploy)
        before_rollback = time.monotonic()
        rolled_back = script(rstack, "rollback")
        after_rollback = time.monotonic()
        load.wait_for(2 * CLIENTS, after=after_rollback)
    assert deployed.returncode == 0, deployed.stderr
    assert "quality gate passed" in deployed.stdout and "2.0 is now the default (was 1.0)" in deployed.stdout
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert "1.0 is still loaded: switching instantly" in rolled_back.stdout

    print(
        f"under load: {len(load.answers)} requests by {CLIENTS} clients, statuses {dict(load.statuses())}, "
        f"deploy.sh {after_deploy - before_deploy:.1f}s, rollback.sh {after_rollback - before_rollback:.1f}s"
    )
    assert load.statuses() == {200: len(load.answers)}, load.statuses()
    assert load.versions(done_before=before_deploy) == {"1.0"}
    assert load.versions(sent_after=after_deploy, done_before=before_rollback) == {"2.0"}
    assert load.versions(sent_after=after_rollback) == {"1.0"}
    assert serving(rstack) == ("1.0", ["1.0", "2.0"]), "2.0 stays loaded for an instant way back"
    assert os.readlink(rstack.current_archive()) == "yolo_v1.0.mar"

    again = script(rstack, "rollback", "1.0")
    assert again.returncode == 0 and "already the default; nothing to do" in again.stdout
    history = read_history(rstack)
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("deploy", "2.0", "1.0"),
        ("rollback", "1.0", "2.0"),
    ]
    assert history[0]["sha256"] == package_sha(rstack, "2.0") and history[0]["who"] and history[0]["when"]


def package_sha(stack: TestStack, version: str) -> str:
    return hashlib.sha256((stack.model_store / f"yolo_v{version}.mar").read_bytes()).hexdigest()


@pytest.mark.integration
@pytest.mark.releases
def test_broken_archives_are_refused_while_the_old_version_serves(rstack):
    with Load(rstack.gateway_url, rstack.sample_images, CLIENTS) as load:
        corrupted = script(rstack, "deploy", "9.0")
        unloadable = script(rstack, "deploy", "7.0")
        blind = script(rstack, "deploy", "8.0")
        load.wait_for(CLIENTS)
    assert unloadable.returncode == 1
    assert (
        "refused 7.0; 1.0 keeps serving" in unloadable.stderr and "TorchServe refused to load 7.0" in unloadable.stderr
    )
    assert corrupted.returncode == 1
    assert "refused 9.0; 1.0 keeps serving" in corrupted.stderr and "not a TorchServe archive" in corrupted.stderr
    assert blind.returncode == 1
    assert "refused 8.0; 1.0 keeps serving" in blind.stderr and "failed the quality gate" in blind.stderr
    threshold = gate_spec(ROOT / "samples")["threshold"]
    assert f"recall 0.000 on 6 gate images < {threshold}" in blind.stderr, blind.stderr
    assert load.statuses() == {200: len(load.answers)}, load.statuses()
    assert load.versions() == {"1.0"}
    assert serving(rstack) == ("1.0", ["1.0", "2.0"]), "the refused candidate is unloaded again"
    assert os.readlink(rstack.current_archive()) == "yolo_v1.0.mar"
    refused = [e for e in read_history(rstack) if e["action"] == "refused"]
    assert [e["version"] for e in refused] == ["9.0", "7.0", "8.0"] and all(e["reason"] for e in refused)


@pytest.mark.integration
@pytest.mark.releases
def test_a_restarted_torchserve_comes_back_on_the_deployed_version(rstack):
    assert script(rstack, "deploy", "2.0").returncode == 0
    stop_service(rstack, "torchserve")
    pid = start_torchserve(rstack)
    wait_until(lambda: ready_workers(rstack) > 0, "torchserve", 180, pid, rstack.log_dir / "torchserve.log")
    assert serving(rstack) == ("2.0", ["2.0"])
    health = httpx.get(f"{rstack.gateway_url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["version"] == "2.0"

    back = script(rstack, "rollback", "--keep", "0")
    assert back.returncode == 0, back.stderr
    assert "registering yolo_v1.0.mar" in back.stdout, "1.0 was not loaded after the restart: it is registered again"
    assert "unloaded 2.0" in back.stdout
    assert serving(rstack) == ("1.0", ["1.0"]), "--keep 0 keeps no previous version loaded"


def predict_many(stack: TestStack, count: int) -> list[str]:
    images = [(p.name, p.read_bytes()) for p in stack.sample_images]

    def one(i: int) -> str:
        name, data = images[i % len(images)]
        response = httpx.post(f"{stack.gateway_url}/predict", files={"file": (name, data)}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == response.json()["model"]["version"]
        return response.json()["model"]["version"]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def predictions_by_version(stack: TestStack, model: str = "yolo") -> dict[str, float]:
    text = httpx.get(f"{stack.gateway_url}/metrics", timeout=10).text
    found = re.findall(rf'^gateway_predictions_total\{{model="{model}",model_version="([^"]+)"\}} (\S+)', text, re.M)
    return {v: float(n) for v, n in found}


@pytest.mark.integration
@pytest.mark.releases
def test_canary_gets_its_share_then_is_promoted(rstack):
    started = script(rstack, "deploy", "2.0", "--canary", "20")
    assert started.returncode == 0, started.stderr
    assert read_canary(rstack) == Canary("2.0", 20.0)
    assert serving(rstack)[0] == "1.0", "a canary is not the default"

    before = predictions_by_version(rstack)
    versions = Counter(predict_many(rstack, 500))
    after = predictions_by_version(rstack)
    assert set(versions) == {"1.0", "2.0"}
    share = versions["2.0"] / 500
    assert 0.12 <= share <= 0.28, f"canary got {share:.1%} of 500 requests, expected about 20%"
    for version, count in versions.items():
        assert after[version] - before.get(version, 0) == count, "metrics are split by the version that answered"

    promoted = script(rstack, "deploy", "2.0", "--promote")
    assert promoted.returncode == 0, promoted.stderr
    assert read_canary(rstack) is None
    assert serving(rstack) == ("2.0", ["1.0", "2.0"])
    assert os.readlink(rstack.current_archive()) == "yolo_v2.0.mar"
    assert set(predict_many(rstack, 8)) == {"2.0"}
    print(f"canary share: {share:.1%} of 500 requests ({dict(versions)})")


@pytest.mark.integration
@pytest.mark.releases
def test_rollback_aborts_a_canary(rstack):
    assert script(rstack, "rollback").returncode == 0
    assert serving(rstack)[0] == "1.0"
    assert script(rstack, "deploy", "2.0", "--canary", "50").returncode == 0
    aborted = script(rstack, "rollback")
    assert aborted.returncode == 0, aborted.stderr
    assert "canary of 2.0 aborted" in aborted.stdout
    assert read_canary(rstack) is None
    assert serving(rstack) == ("1.0", ["1.0"])
    assert set(predict_many(rstack, 16)) == {"1.0"}
    assert [e["action"] for e in read_history(rstack)][-2:] == ["canary", "rollback"]


@pytest.mark.integration
@pytest.mark.releases
def test_an_archive_without_a_gate_set_deploys_only_when_told_and_is_recorded_ungated(rstack):
    refused = script(rstack, "deploy", "6.0")
    assert refused.returncode == 1
    assert "carries no gate set" in refused.stderr and "--no-gate" in refused.stderr
    assert serving(rstack) == ("1.0", ["1.0"])
    forced = script(rstack, "deploy", "6.0", "--no-gate")
    assert forced.returncode == 0, forced.stderr
    assert "smoke check passed; NOT gated (--no-gate)" in forced.stdout
    last = read_history(rstack)[-1]
    assert (last["action"], last["version"], last["gated"]) == ("deploy", "6.0", False)
    gated = [e for e in read_history(rstack) if e["action"] == "deploy" and e["version"] == "2.0"]
    assert gated and all(e["gated"] and e["gate"]["metric"] == "recall" for e in gated)
    assert script(rstack, "rollback").returncode == 0
    assert serving(rstack)[0] == "1.0"
