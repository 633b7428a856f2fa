"""Package YOLO weights into a versioned TorchServe .mar archive: the command line of
``operations.packaging.package``, which does the work (``scripts/package_mar.sh`` runs this).

Relative paths of --weights, --store and --config are the repository's; the others the working
directory's. A refusal prints ``error: <why>`` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from operations.packaging import DEFAULT_FORMAT, ROOT, PackagingError, package
from serving.yolo_contract import FORMATS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="package_mar.sh",
        description="Package YOLO weights into a versioned TorchServe .mar archive.",
    )
    parser.add_argument(
        "--weights", default="models/weights/best.pt", help="Ultralytics weights of any task (default: %(default)s)"
    )
    parser.add_argument("--version", default="1.0", help="model version, e.g. 1.0 or 2.1.3 (default: %(default)s)")
    parser.add_argument("--name", default="yolo", help="model name served by TorchServe (default: %(default)s)")
    parser.add_argument(
        "--imgsz", type=int, help="inference image size (default: the size the weights were trained at)"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=DEFAULT_FORMAT,
        help="model format inside the archive; exported from the weights while packaging (default: %(default)s)",
    )
    parser.add_argument("--store", default="serving/model-store", help="model store directory (default: %(default)s)")
    parser.add_argument(
        "--config", default="serving/model-config.yaml", help="model-config template (default: %(default)s)"
    )
    parser.add_argument(
        "--gate-data",
        metavar="DIR",
        help="labelled gate set to carry in the archive, in Ultralytics' layout: a folder with data.yaml (its val "
        "split, or images/val + labels/val, or images/ + labels/) or the dataset yaml itself; for classify one "
        "folder per class, or val/<class>/; a gate.yaml in it may give the threshold. Without --gate-data, the gate "
        "set of <name>_current.mar is reused when it fits the weights (see README)",
    )
    parser.add_argument(
        "--reference",
        help="folder of images as the line sees them (>= 1,000 advised): the archive carries a drift reference "
        "computed from them, calibrated for the gateway's drift detectors (see README)",
    )
    parser.add_argument(
        "--gate-threshold",
        type=float,
        metavar="X",
        help="score in (0, 1] the gate set must reach: recall (detect, segment, obb), PCK (pose) or top-1 "
        "(classify); overrides gate.yaml's threshold",
    )
    parser.add_argument(
        "--train-data",
        metavar="PATH",
        help="the dataset yaml or folder the weights were trained on, recorded in the archive's lineage.json "
        "(with the source weights, always carried) for retraining",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes TorchServe runs for this model (default: the config's minWorkers/maxWorkers)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing archive of the same version")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        built = package(
            ROOT / args.weights,
            args.version,
            ROOT / args.store,
            name=args.name,
            fmt=args.format,
            gate_data=args.gate_data,
            gate_threshold=args.gate_threshold,
            reference=args.reference,
            train_data=args.train_data,
            workers=args.workers,
            imgsz=args.imgsz,
            config=ROOT / args.config,
            force=args.force,
            log=lambda line: print(line, flush=True),
        )
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lineage = built.lineage
    print(f"archive: {built.archive}")
    print(f"sha256:  {built.sha256}")
    print(f"version: {built.version}")
    print(f"format:  {built.format}")
    print(f"gate:    {built.gate.source if built.gate else 'none (deploy needs --no-gate)'}")
    print(f"drift:   {built.reference or 'no reference (drift state no_reference)'}")
    print(
        f"lineage: parent {lineage['parent'] or 'none'}, train data {lineage['train_data'] or 'not recorded'}, "
        f"source weights {lineage['source_weights']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
