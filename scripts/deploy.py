"""Deploy, canary, promote and roll back a model's versions on a running TorchServe, dropping no request.

The command line of ``scripts/deploy.sh`` and ``scripts/rollback.sh``; the work is
``operations.releases``.
"""

from __future__ import annotations

import argparse
import sys

from gateway.torchserve import TorchServeError
from operations.archives import DeployError
from operations.history import print_history
from operations.releases import DEFAULT_DRAIN_S, DEFAULT_KEEP, deploy, promote, rollback, start_canary
from scripts.stack_args import stack_from_env, stack_options


def _stack_options() -> argparse.ArgumentParser:
    parent = stack_options()
    tuning = parent.add_argument_group("switching")
    tuning.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="deploy an archive that carries no gate set (smoke check only); the history records it as ungated",
    )
    tuning.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help="previous versions kept loaded for instant rollback [env DEPLOY_KEEP] (%(default)s)",
    )
    tuning.add_argument(
        "--drain",
        type=float,
        default=DEFAULT_DRAIN_S,
        help="seconds given to in-flight requests before a version is unloaded [env DEPLOY_DRAIN_S] (%(default)s)",
    )
    return parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = _stack_options()
    parser = argparse.ArgumentParser(prog="scripts.deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dep = sub.add_parser(
        "deploy",
        prog="scripts/deploy.sh",
        parents=[common],
        help="deploy, canary or promote a version",
        description="Register VERSION's archive, gate it on the labelled set it carries, make it the default "
        "(or a canary), keep the previous version loaded and record it in the deploy history.",
    )
    dep.add_argument("version", help="version packaged as <model-store>/<model>_vVERSION.mar")
    mode = dep.add_mutually_exclusive_group()
    mode.add_argument("--canary", type=float, metavar="PERCENT", help="send PERCENT %% of /predict to it, no promote")
    mode.add_argument("--promote", action="store_true", help="finish the running canary of VERSION")
    back = sub.add_parser(
        "rollback",
        prog="scripts/rollback.sh",
        parents=[common],
        help="abort a canary or go back to a version",
        description="Abort a running canary, or make VERSION (default: the version served before the current "
        "one) the default again: instant when it is still loaded, re-registered from its archive when not.",
    )
    back.add_argument("version", nargs="?", help="version to go back to (default: the previous one)")
    sub.add_parser("history", parents=[common], help="print the deploy history")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = stack_from_env(args)
    options = {"keep": args.keep, "drain_s": args.drain, "gate": args.gate}
    try:
        if args.command == "history":
            print_history(stack)
            return 0
        if args.command == "rollback":
            rollback(stack, args.version, **options)
        elif args.promote:
            promote(stack, args.version, keep=args.keep, drain_s=args.drain)
        elif args.canary is not None:
            start_canary(stack, args.version, args.canary, **options)
        else:
            deploy(stack, args.version, **options)
    except (DeployError, TorchServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
