"""Retrain a model from its labelled captures as a release: fine-tune, compare, package, canary, promote.

    python -m scripts.retrain run   --model yolo [--dataset var/labels/yolo] [--epochs 5]   (make retrain MODEL=yolo)
    python -m scripts.retrain watch --policy retrain.yaml [--once]     (a trigger policy runs it without a person)
    python -m scripts.retrain runs  --model yolo                       (the MLflow runs; make mlflow-ui shows them)

The work is ``retraining.pipeline`` and ``retraining.trigger``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from gateway.torchserve import TorchServeError
from operations.archives import DeployError
from retraining.pipeline import RetrainError, RetrainOptions, retrain, stamped
from retraining.tracking import runs
from retraining.trigger import load_triggers, watch
from scripts.stack_args import stack_from_env, stack_options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = stack_options()
    tuning = argparse.ArgumentParser(add_help=False)
    group = tuning.add_argument_group("retraining")
    group.add_argument("--dataset", type=Path, help="labelled captures (default: <run-dir>/labels/<model>)")
    group.add_argument("--version", help="the candidate's version (default: the incumbent's next minor)")
    group.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (%(default)s)")
    group.add_argument("--replay-ratio", type=float, default=1.0, help="replayed training images per capture (1.0)")
    group.add_argument("--frozen-data", type=Path, help="holdout of the original data to judge forgetting on (yaml)")
    group.add_argument("--gate-threshold", type=float, help="the candidate's gate threshold (default: incumbent's)")
    group.add_argument("--canary-percent", type=float, default=30.0, help="canary share of traffic, %% (30)")
    group.add_argument("--canary-requests", type=int, default=100, help="canary answers before promoting (100)")
    group.add_argument("--canary-timeout", type=float, default=600.0, help="seconds to reach them, else roll back")
    parser = argparse.ArgumentParser(prog="scripts.retrain", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common, tuning], help="retrain now (by hand)")
    watching = sub.add_parser("watch", parents=[common, tuning], help="retrain whenever a trigger policy says so")
    watching.add_argument("--policy", type=Path, required=True, help="trigger policy YAML, one section per model")
    watching.add_argument("--interval", type=float, default=60.0, help="seconds between checks (60)")
    watching.add_argument("--once", action="store_true", help="check once and exit")
    sub.add_parser("runs", parents=[common], help="print the model's MLflow runs, newest first")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace, trigger: str) -> RetrainOptions:
    return RetrainOptions(
        dataset=args.dataset, version=args.version, epochs=args.epochs, replay_ratio=args.replay_ratio,
        gate_threshold=args.gate_threshold, frozen_data=args.frozen_data, canary_percent=args.canary_percent,
        canary_requests=args.canary_requests, canary_timeout_s=args.canary_timeout, trigger=trigger,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = stack_from_env(args)
    try:
        if args.command == "runs":
            for run in runs(stack.model_name):
                print(json.dumps(run))
            return 0
        if args.command == "run":
            outcome = retrain(stack, options_from(args, "by hand"), out=stamped(print))
            return 0 if outcome.result == "promoted" else 1
        policies = load_triggers(args.policy)
        stacks = {model: dataclasses.replace(stack, model_name=model) for model in policies}
        datasets = {model: args.dataset or stack.run_dir / "labels" / model for model in policies}

        def one(model_stack, reason: str):
            options = dataclasses.replace(options_from(args, reason), dataset=datasets[model_stack.model_name])
            return retrain(model_stack, options, out=stamped(print))

        watch(stacks, policies, datasets, one, args.interval, args.once)
    except (RetrainError, DeployError, TorchServeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
