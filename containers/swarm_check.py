"""Replicas on a real Docker Swarm, measured: ``make swarm-test`` (full) and its short version in ``make test``.

Builds the images, makes this engine a single-node swarm (unless it is one), deploys
docker/swarm/stack.yml with archives v1.0 and v2.0 (one TorchServe worker each) and a
self-signed certificate, and drives it only through the balancer on loopback:

- full: images/s at 1, 2 and 3 replicas capped at 0.5 CPU each and how evenly HAProxy spreads
  them; a rolling update v1.0 -> v2.0 under 8 clients; ``docker service update --rollback``
  under load; an update to an archive that cannot load, which Swarm must roll back by itself;
  ``docker kill`` of a replica under load; HTTPS against HTTP. The table goes into REPORT.md
  (between the swarm-test markers) and reports/swarm.md.
- quick (``--quick``, tests/test_swarm_stack.py): 2 replicas, the update and the rollback
  under load with no failed request, one replica killed, HTTPS.

It removes the stack, and leaves the swarm only if it created it. Exit 0 only when every
target was met.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.loadgen import Load
from containers.engine import ROOT, Engine, SetupError, addresses, quiet
from containers.swarm import Stack, build_images, join_or_init, leave, self_signed, tasks
from operations.packaging import package
from operations.stack import free_ports

SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
ADMIN_KEY = "swarm-operator-key"
STARTED = time.monotonic()  # the steps print how far into the proof each begins
REPORT = ROOT / "REPORT.md"
MARKERS = ("<!-- swarm-test:begin -->", "<!-- swarm-test:end -->")
TEST_SUBNET = "10.232.0.0/24"  # not stack.yml's default: make swarm-up's stack may be running beside the test's


@dataclass
class Plan:
    quick: bool
    replicas: int = 2
    cpus: str = "0.5"
    clients: int = 8
    update_requests: int = 1000  # answers the rolling update must span (full)
    throughput_s: float = 40.0


@dataclass
class Row:
    what: str
    target: str
    measured: str
    met: bool


class SwarmCheck:
    def __init__(self, plan: Plan, tmp: Path):
        self.plan = plan
        self.tmp = tmp
        self.rows: list[Row] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------ setup

    def package(self) -> Path:
        store = self.tmp / "model-store"
        store.mkdir()
        for version in ("1.0", "2.0"):
            weights = ROOT / "models" / "weights" / f"v{version}" / "best.pt"
            package(weights, version, store, gate_data=ROOT / "samples", workers=1, log=lambda _: None)
        # An archive that cannot load: v1.0's first half (a truncated zip), as a failed copy leaves it.
        good = (store / "yolo_v1.0.mar").read_bytes()
        (store / "yolo_v9.9.mar").write_bytes(good[: len(good) // 2])
        for path in [self.tmp, store, *store.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # the replicas run as UID 1000
        return store

    def stack(self, store: Path) -> Stack:
        pem, cert = self_signed(self.tmp / "tls")
        env = {
            "MODEL_STORE": str(store),
            "TLS_PEM": str(pem),
            "MODEL_VERSION": "1.0",
            "REPLICAS": str(self.plan.replicas),
            "REPLICA_CPUS": self.plan.cpus,
            "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
            "SWARM_SUBNET": TEST_SUBNET,
        }
        return Stack("yoloswarmtest", env, *free_ports(2), ca=cert)

    # ------------------------------------------------------------------ helpers

    def record(self, what: str, target: str, measured: str, met: bool) -> None:
        self.rows.append(Row(what, target, measured, met))
        print(f"{'PASS' if met else 'FAIL'} {what}: {measured} (target: {target})", flush=True)

    def load(self, stack: Stack, clients: int | None = None) -> Load:
        return Load(stack.http, SAMPLES, clients=clients or self.plan.clients)

    def versions_by_replica(self, stack: Stack, count: int) -> dict[str, str]:
        """Each replica the balancer reaches -> the version its /health reports."""
        seen: dict[str, str] = {}
        with httpx.Client(timeout=10) as client:
            for _ in range(count * 15):
                answer = client.get(f"{stack.http}/health")
                if answer.status_code == 200:
                    seen[answer.headers["x-served-by"]] = answer.json()["version"]
                if len(seen) == count:
                    break
        return seen

    def on_version(self, stack: Stack, version: str) -> tuple[bool, str]:
        """Every replica task's spec and every replica the balancer reaches are on ``version``."""
        count = self.plan.replicas
        specs = [
            next((e for e in t["env"] if e.startswith("MODEL_VERSION=")), "?") for t in tasks(stack.service("replica"))
        ]
        served = self.versions_by_replica(stack, count)
        ok = len(specs) == count and set(specs) == {f"MODEL_VERSION={version}"}
        ok = ok and len(served) == count and set(served.values()) == {version}
        return ok, f"tasks {sorted(specs)}; answering {served}"

    def under_load(self, stack: Stack, action, at_least: int = 0):
        """Run ``action()`` under load; keep the load on until ``at_least`` answers; the load and its result."""
        with self.load(stack) as load:
            load.wait_for(self.plan.clients * 2)
            started = time.monotonic()
            result = action()
            while len(load.answers) < at_least:
                time.sleep(0.5)
            load.wait_for(self.plan.clients, after=time.monotonic())
        return load, result, started

    @staticmethod
    def failures(load: Load) -> Counter:
        return Counter(a.status for a in load.answers if a.status != 200)

    # ------------------------------------------------------------------ checks

    def throughput(self, stack: Stack) -> None:
        rates, spreads = {}, {}
        for count in (1, 2, 3):
            took = stack.scale(count)
            with self.load(stack, clients=3 * count) as load:
                time.sleep(5)  # warm: every replica busy
                start = time.monotonic()
                time.sleep(self.plan.throughput_s)
                end = time.monotonic()
            window = [a for a in load.answers if start <= a.done <= end]
            bad = [a for a in window if a.status != 200]
            rates[count] = len(window) / (end - start)
            served = Counter(a.served_by for a in window)
            spreads[count] = {name: n / len(window) for name, n in sorted(served.items())}
            print(f"  {count} replica(s): {rates[count]:.2f} images/s, {len(bad)} failed, ready in {took:.0f} s, "
                  f"spread {spreads[count]}", flush=True)  # fmt: skip
        t1, t2, t3 = rates[1], rates[2], rates[3]
        self.record(
            "images/s at 1, 2, 3 replicas, each capped at 0.5 CPU",
            "T(2) ≥ 1.8 × T(1), T(3) ≥ 2.4 × T(1)",
            f"T(1) {t1:.2f}, T(2) {t2:.2f} ({t2 / t1:.2f}×), T(3) {t3:.2f} ({t3 / t1:.2f}×)",
            t2 >= 1.8 * t1 and t3 >= 2.4 * t1,
        )
        worst = max(abs(share * n - 1) for n in (2, 3) for share in spreads[n].values())
        shown = "; ".join(f"{n}: " + ", ".join(f"{s:.1%}" for s in spreads[n].values()) for n in (2, 3))
        even = all(len(spreads[n]) == n for n in (2, 3)) and worst <= 0.15
        self.record(
            "spread of requests over replicas", "each within ±15 % of 1/n", f"{shown} (worst {worst:.1%} off)", even
        )
        stack.scale(self.plan.replicas)

    def rolling_update(self, stack: Stack) -> None:
        need = self.plan.update_requests if not self.plan.quick else 0
        load, (state, took), _ = self.under_load(stack, lambda: stack.update("--env-add", "MODEL_VERSION=2.0"), need)
        failed = self.failures(load)
        on, where = self.on_version(stack, "2.0")
        versions = Counter(a.version for a in load.answers if a.status == 200)
        self.record(
            f"rolling update v1.0 → v2.0 of {self.plan.replicas} replicas under {self.plan.clients} clients",
            f"0 non-200 in ≥ {need:,} requests; every replica ends on v2.0"
            if need
            else "0 non-200; every replica on v2.0",
            f"{len(load.answers):,} requests, {sum(failed.values())} non-200 {dict(failed) or ''}; update {state} in "
            f"{took:.0f} s; answered by {dict(versions)}; {where}",
            state == "completed" and not failed and len(load.answers) >= need and on,
        )

    def models_alike(self, stack: Stack) -> None:
        bodies: dict[str, str] = {}
        with httpx.Client(timeout=30) as client:
            for _ in range(self.plan.replicas * 15):
                answer = client.get(f"{stack.http}/models")
                if answer.status_code == 200:
                    bodies[answer.headers["x-served-by"]] = json.dumps(answer.json(), sort_keys=True)
                if len(bodies) == self.plan.replicas:
                    break
        alike = len(bodies) == self.plan.replicas and len(set(bodies.values())) == 1
        self.record("GET /models through the balancer", "the same from every replica",
                    f"{len(bodies)} replicas, {len(set(bodies.values()))} distinct answer(s)", alike)  # fmt: skip

    def rollback(self, stack: Stack) -> None:
        self.back_on_v1(stack, ("--rollback",), "`docker service update --rollback` under load",
                        "0 non-200; every replica back on v1.0")  # fmt: skip

    def broken_update(self, stack: Stack) -> None:
        self.back_on_v1(stack, ("--env-add", "MODEL_VERSION=9.9"), "an update to an archive that cannot load "
                        "(v9.9, truncated)", "Swarm rolls back by itself; 0 non-200")  # fmt: skip

    def back_on_v1(self, stack: Stack, update: tuple[str, ...], what: str, target: str) -> None:
        """``docker service update UPDATE`` under load must end rolled back, every replica on v1.0, nothing failed."""
        load, (state, took), _ = self.under_load(stack, lambda: stack.update(*update))
        failed = self.failures(load)
        on, where = self.on_version(stack, "1.0")
        measured = (
            f"{len(load.answers):,} requests, {sum(failed.values())} non-200 {dict(failed) or ''}; update ended "
            f"{state} after {took:.0f} s; {where}"
        )
        self.record(what, target, measured, state == "rollback_completed" and not failed and on)

    def kill(self, stack: Stack) -> None:
        victim = next(t for t in tasks(stack.service("replica")) if t["state"] == "running")
        ips = addresses(victim["container"])

        def kill_one() -> tuple[int, float]:
            in_flight = in_flight_at(stack, ips)
            killed = time.monotonic()
            quiet("docker", "kill", victim["container"])
            stack.wait_ready(self.plan.replicas, 600)
            return in_flight, time.monotonic() - killed

        load, (in_flight, back), _ = self.under_load(stack, kill_one)
        failed = self.failures(load)
        self.record(
            "`docker kill` of one replica under load",
            "failures ≤ that replica's requests in flight; replaced, time reported",
            f"{len(load.answers):,} requests, {sum(failed.values())} failed {dict(failed) or ''}, {in_flight} in "
            f"flight on it when killed; a new replica healthy and balanced {back:.0f} s after the kill",
            sum(failed.values()) <= in_flight,
        )

    def https(self, stack: Stack) -> None:
        same, shown = True, []
        with httpx.Client(timeout=30) as plain, httpx.Client(timeout=30, verify=str(stack.ca)) as tls:
            for sample in SAMPLES:
                files = {"file": (sample.name, sample.read_bytes())}
                a, b = plain.post(f"{stack.http}/predict", files=files), tls.post(f"{stack.https}/predict", files=files)
                strip = [(a.json()["detections"], a.status_code), (b.json()["detections"], b.status_code)]
                same = same and a.status_code == b.status_code == 200 and strip[0] == strip[1]
                shown.append(f"{sample.name} {len(strip[0][0])}={len(strip[1][0])} detections")
            health = tls.get(f"{stack.https}/health")
        protocol = health.extensions.get("http_version", b"").decode()
        self.record("HTTPS through the balancer", "the same answers as HTTP",
                    f"{'; '.join(shown)}; certificate verified, {protocol}", same)  # fmt: skip


RUNTIME_API = """
import socket, sys
def ask(command):
    with socket.create_connection(("127.0.0.1", 9999), timeout=5) as s:
        s.sendall(command.encode() + b"\\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()
print(ask("show servers state replicas"))
print("@@")
print(ask("show stat"))
"""


def in_flight_at(stack: Stack, ips: list[str]) -> int:
    """Requests HAProxy has open on the server slot holding one of ``ips`` (its runtime API: scur)."""
    balancer = next(t["container"] for t in tasks(stack.service("balancer")))
    out = quiet("docker", "exec", balancer, "python", "-c", RUNTIME_API).stdout
    state, stat = out.split("@@", 1)
    slot = next((f[3] for f in (line.split() for line in state.splitlines()) if len(f) > 4 and f[4] in ips), None)
    header, *rows = [line.lstrip("# ").split(",") for line in stat.splitlines() if line.strip()]
    for fields in rows:
        row = dict(zip(header, fields, strict=False))
        if row.get("pxname") == "replicas" and row.get("svname") == slot:
            return int(row.get("scur") or 0)
    raise KeyError(f"no balancer slot holds {ips}: {state.strip()}")


def write_report(check: SwarmCheck, took: float) -> str:
    lines = ["| what | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {r.what} | {r.target} | {r.measured} | {'yes' if r.met else '**no**'} |" for r in check.rows]
    table = "\n".join(lines)
    stamp = time.strftime("%Y-%m-%d")
    body = f"`make swarm-test` on {stamp}, {took / 60:.1f} min in all:\n\n{table}\n"
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "swarm.md").write_text(f"# make swarm-test\n\n{body}")
    text = REPORT.read_text()
    if MARKERS[0] in text and MARKERS[1] in text:
        before, rest = text.split(MARKERS[0], 1)
        after = rest.split(MARKERS[1], 1)[1]
        REPORT.write_text(f"{before}{MARKERS[0]}\n{body}{MARKERS[1]}{after}")
    return table


def exercise(plan: Plan, tmp: Path) -> SwarmCheck:
    check = SwarmCheck(plan, tmp)
    start = time.monotonic()
    build_images(tmp)
    store = check.package()
    print(f"images built, archives packaged: {time.monotonic() - start:.0f} s", flush=True)
    created = join_or_init()
    stack = check.stack(store)
    try:
        stack.deploy()
        took = stack.wait_ready(plan.replicas, 600)
        print(f"stack deployed, {plan.replicas} replicas healthy and balanced: {took:.0f} s", flush=True)
        steps = [check.https, check.models_alike, check.rolling_update, check.rollback, check.kill]
        if not plan.quick:
            steps = [check.throughput, *steps[:4], check.broken_update, check.kill]
        for step in steps:
            print(f"--- {step.__name__} [{time.monotonic() - STARTED:.0f} s]", flush=True)
            try:
                step(stack)
            except (TimeoutError, SetupError, httpx.HTTPError, StopIteration, KeyError) as exc:
                check.record(step.__name__, "runs", f"{type(exc).__name__}: {exc}", False)
    finally:
        print(f"stack removed: {stack.remove():.0f} s", flush=True)
        if created:
            leave()
    return check


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make swarm-test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short version make test runs (2 replicas)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(quick=True, cpus="1.0", clients=4) if args.quick else Plan(quick=False)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swarm-test-") as name:
        tmp = Path(name)
        try:
            with Engine(tmp):
                check = exercise(plan, tmp)
        except (SetupError, TimeoutError) as exc:
            print(f"swarm-test: error: {exc}", file=sys.stderr)
            return 1
    took = time.monotonic() - started
    table = write_report(check, took) if not plan.quick else ""
    print(table)
    failed = [row.what for row in check.rows if not row.met]
    print(f"swarm-test{' --quick' if plan.quick else ''}: {len(check.rows) - len(failed)} targets met, "
          f"{len(failed)} missed in {took:.0f} s")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
