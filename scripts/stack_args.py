"""The options that name a stack (the ``make up`` one by default), shared by deploy, captures and retrain."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from operations.stack import Stack


def stack_from_env(args: argparse.Namespace) -> Stack:
    """The ``make up`` stack, or the one the options / STACK_* environment variables point at."""
    stack = Stack()
    overrides = {
        "model_name": args.model or stack.model_name,
        "run_dir": Path(args.run_dir) if args.run_dir else stack.run_dir,
        "model_store": Path(args.model_store) if args.model_store else stack.model_store,
        "inference_port": args.inference_port or stack.inference_port,
        "management_port": args.management_port or stack.management_port,
        "state_store": args.state_store or stack.state_store,
        "gateway_port": args.gateway_port or stack.gateway_port,
    }
    if args.capture_dir:
        overrides["gateway_env"] = {"GATEWAY_CAPTURE_DIR": args.capture_dir}
    return Stack(**overrides)


def stack_options() -> argparse.ArgumentParser:
    """The options that name a stack, as a parent parser (deploy, captures and retrain share them)."""
    env = os.environ.get
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("stack (default: the `make up` stack)")
    group.add_argument("--model", default=env("STACK_MODEL_NAME"), help="model name [env STACK_MODEL_NAME] (yolo)")
    group.add_argument("--run-dir", default=env("STACK_RUN_DIR"), help="runtime dir [env STACK_RUN_DIR] (var/)")
    group.add_argument("--model-store", default=env("STACK_MODEL_STORE"), help="[env STACK_MODEL_STORE]")
    group.add_argument("--inference-port", type=int, default=env("STACK_INFERENCE_PORT"), help="(8085)")
    group.add_argument("--management-port", type=int, default=env("STACK_MANAGEMENT_PORT"), help="(8086)")
    group.add_argument(
        "--state-store",
        default=env("STACK_STATE_STORE"),
        help="SQLite file or redis:// URL the gateway reads [env STACK_STATE_STORE] (<run-dir>/state.db)",
    )
    group.add_argument(
        "--gateway-port", type=int, default=env("STACK_GATEWAY_PORT"), help="[env STACK_GATEWAY_PORT] (8000)"
    )
    group.add_argument(
        "--capture-dir",
        default=env("GATEWAY_CAPTURE_DIR"),
        help="where the gateway keeps captures [env GATEWAY_CAPTURE_DIR] (<run-dir>/captures)",
    )
    return parent
