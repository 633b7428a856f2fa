"""The captures a gateway kept of a model's traffic: list them, export them for labelling, import the labels.

    python -m scripts.captures list   --model yolo [--reason drift]
    python -m scripts.captures export --model yolo --format yolo --out var/labels/yolo
    python -m scripts.captures export --model yolo --format labelstudio --out var/labelstudio/yolo
    python -m scripts.captures import --model yolo --dataset var/labels/yolo --labels corrected/   (or export.json)

The work is ``retraining.captured``; ``make retrain`` fine-tunes on the labelled dataset.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path

from operations.archives import DeployError
from retraining.captured import FORMATS, captured_rows, export, import_into
from retraining.datasets.layout import DatasetError
from scripts.stack_args import stack_from_env, stack_options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = stack_options()
    parser = argparse.ArgumentParser(prog="scripts.captures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", parents=[common], help="one line per capture, oldest first")
    out = sub.add_parser("export", parents=[common], help="write the captures for labelling")
    for command in (listing, out):
        command.add_argument("--reason", help="only captures with this reason (drift, random, class:dent, ...)")
        command.add_argument("--since", type=datetime.fromisoformat, help="only captures at or after (ISO 8601)")
    out.add_argument("--format", choices=FORMATS, default="yolo", help="yolo dataset or Label Studio tasks (yolo)")
    out.add_argument("--out", type=Path, required=True, help="folder to write (re-exporting keeps a person's labels)")
    back = sub.add_parser("import", parents=[common], help="bring corrected labels into an exported yolo dataset")
    back.add_argument("--dataset", type=Path, required=True, help="the folder `export --format yolo` wrote")
    back.add_argument("--labels", type=Path, required=True, help="YOLO label files, or Label Studio's JSON export")
    back.add_argument("--who", default=getpass.getuser(), help="who labelled them (recorded in labelled.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = stack_from_env(args)
    since = args.since.replace(tzinfo=args.since.tzinfo or UTC).timestamp() if getattr(args, "since", None) else None
    try:
        if args.command == "list":
            rows, _ = captured_rows(stack, args.reason, since)
            for row in rows:
                found = len(row["answer"].get("detections", row["answer"].get("classifications", [])))
                print(f"{row['id']}  {row['when']}  v{row['version']}  {found:3d} found  {','.join(row['reasons'])}")
            print(f"{len(rows)} captures of {stack.model_name} in {stack.capture_dir}")
        elif args.command == "export":
            print(export(stack, args.format, args.out, args.reason, since))
        else:
            summary = import_into(stack, args.dataset, args.labels, args.who)
            print(f"{summary.labelled} images labelled in {args.dataset}")
            for what, ids in (("matched no image", summary.unknown), ("had no annotation", summary.unannotated)):
                if ids:
                    print(f"warning: {len(ids)} labels {what}: {', '.join(ids[:10])}", file=sys.stderr)
    except (DeployError, DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
