"""Replicas on Docker Swarm: ``make swarm-up`` / ``swarm-down`` / ``swarm-test`` (docker/swarm/stack.yml).

up: builds the images, makes this engine a swarm manager if it is none, and deploys the stack
(replicas of gateway + TorchServe, HAProxy with TLS on the gateway's port, Redis) serving the
archives in serving/model-store. down: removes the stack, and leaves the swarm if up created it.
test: the measured proof (containers/swarm_check.py), its table into REPORT.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from containers.engine import ROOT, Engine, SetupError, run
from containers.swarm import Stack, build_images, join_or_init, leave, self_signed, swarm_state

STATE = ROOT / "var" / "swarm"
NAME = "yolo"
STORE = ROOT / "serving" / "model-store"


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def current_version(model: str) -> str:
    link = STORE / f"{model}_current.mar"
    if not link.is_symlink():
        sys.exit(f"error: {link} is missing: run `make archive` first, or say --version")
    return link.resolve().name.removeprefix(f"{model}_v").removesuffix(".mar")


def up(args: argparse.Namespace) -> int:
    version = args.version or current_version("yolo")
    archive = STORE / f"yolo_v{version}.mar"
    if not archive.is_file():
        sys.exit(f"error: {archive} is missing: package it (make package VERSION={version}) or say --version")
    deployed = NAME in run("docker", "stack", "ls", "--format", "{{.Name}}", capture_output=True, check=False).stdout
    for port in (args.port, args.tls_port):
        if not deployed and not port_free(port):
            sys.exit(f"error: port {port} is taken (make down stops the local stack); choose --port/--tls-port")
    STATE.mkdir(parents=True, exist_ok=True)
    pem = Path(args.tls_pem) if args.tls_pem else None
    if pem is None and (STATE / "tls" / "tls.pem").is_file():
        pem = STATE / "tls" / "tls.pem"  # the one made before: a Docker secret cannot change under a running stack
    elif pem is None:
        pem, cert = self_signed(STATE / "tls")
        print(f"TLS: no TLS_PEM given, made a self-signed certificate for localhost: {cert}")
    elif not pem.is_file():
        sys.exit(f"error: TLS_PEM {pem} is not a file (a PEM with the certificate and its key)")
    for part in ("x509", "pkey"):  # HAProxy would refuse to start on it, and the stack would never be ready
        if run("openssl", part, "-noout", "-in", str(pem), capture_output=True, check=False).returncode != 0:
            sys.exit(f"error: TLS_PEM {pem} holds no {'certificate' if part == 'x509' else 'private key'}: "
                     "HAProxy needs both in one PEM file (cat cert.pem key.pem > tls.pem)")  # fmt: skip
    env = {
        "MODEL_STORE": str(STORE),
        "TLS_PEM": str(pem.resolve()),
        "MODEL_VERSION": version,
        "REPLICAS": str(args.replicas),
        "REPLICA_CPUS": args.cpus,
        "GATEWAY_ADMIN_KEYS": os.environ.get("GATEWAY_ADMIN_KEYS", ""),
        "GATEWAY_API_KEYS": os.environ.get("GATEWAY_API_KEYS", ""),
    }
    with Engine(STATE, keep=True):  # a dockerd started here keeps running the stack
        build_images(STATE)
        if join_or_init():
            (STATE / "created-swarm").touch()
        stack = Stack(NAME, env, args.port, args.tls_port)
        stack.deploy()
        took = stack.wait_ready(args.replicas, 900)
        print(f"{args.replicas} replicas of yolo v{version} ready in {took:.0f} s: {stack.http}, {stack.https}")
        print("update:   make package VERSION=2.0 (the replicas mount serving/model-store), then")
        print(f"          docker service update --env-add MODEL_VERSION=2.0 {NAME}_replica")
        print(f"rollback: docker service update --rollback {NAME}_replica")
    return 0


def down(_: argparse.Namespace) -> int:
    if swarm_state() != "active":
        print("no swarm here: nothing to remove")
        return 0
    took = Stack(NAME, {}, 0, 0).remove()
    print(f"stack {NAME} removed: {took:.0f} s")
    created = STATE / "created-swarm"
    if created.exists():
        leave()
        created.unlink()
    return 0


def test(args: argparse.Namespace) -> int:
    from containers.swarm_check import main

    return main(["--quick"] if args.quick else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts.swarm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="build, deploy and wait until every replica serves")
    start.add_argument("--version", help="the yolo archive version to serve (default: yolo_current.mar's)")
    start.add_argument("--replicas", type=int, default=2)
    start.add_argument("--cpus", default="0.5", help="CPU limit of each replica (default 0.5)")
    start.add_argument("--port", type=int, default=int(os.environ.get("SWARM_HTTP_PORT", 8000)))
    start.add_argument("--tls-port", type=int, default=int(os.environ.get("SWARM_HTTPS_PORT", 8443)))
    start.add_argument("--tls-pem", default=os.environ.get("TLS_PEM"), help="certificate + key, PEM (TLS_PEM)")
    commands.add_parser("down", help="remove the stack (and the swarm, if up created it)")
    check = commands.add_parser("test", help="build, deploy, measure, tear down (make swarm-test)")
    check.add_argument("--quick", action="store_true", help="the short version make test runs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        return {"up": up, "down": down, "test": test}[args.command](args)
    except (SetupError, TimeoutError) as exc:
        print(f"error after {time.monotonic() - started:.0f} s: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
