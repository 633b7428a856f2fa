"""Train YOLOv8n (random init, or fine-tuned from earlier weights with --init) and publish versioned weights.

Offline by construction (YOLO_OFFLINE, no pretrained weights, plots off) so it runs
in CI sandboxes and on air-gapped build hosts. The dataset is generated on demand
from (seed, counts, size), Ultralytics run dirs go to models/runs/v<version>/, and
the published folder models/weights/v<version>/ receives best.pt, the per-epoch
results.csv and training.json (command, seed, epochs, image size, wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import generate_dataset as gd  # noqa: E402
import torch  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent
WALL_FILE = "wall_time.json"


def pin_threads(model, threads: int) -> None:
    """Ultralytics resets torch threads to cpu_count-1 (1 on a 2-core box); put our choice back."""
    torch.set_num_threads(threads)
    for event in ("on_train_start", "on_predict_start", "on_val_start"):
        model.add_callback(event, lambda *_: torch.set_num_threads(threads))


def ensure_dataset(seed: int, counts: dict[str, int], size: tuple[int, int], root: Path | None = None) -> Path:
    """Return dataset.yaml for these parameters, generating the data only if no complete copy exists."""
    out = (root or MODELS_DIR / "datasets") / gd.dataset_name(seed, counts, size)
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["counts"] == counts:
        return gd.write_dataset_yaml(out)
    print(f"generating dataset {out} ...", flush=True)
    return gd.generate(out, seed, counts, size)


def _wall_logger(save_dir_ref: dict, previous: float, start: float):
    """Epoch-end callback: one flushed progress line and the cumulative wall time (survives --resume)."""

    def log(trainer):
        wall = previous + time.time() - start
        Path(trainer.save_dir, WALL_FILE).write_text(json.dumps({"wall_time_s": wall}))
        save_dir_ref["dir"] = Path(trainer.save_dir)
        m = trainer.metrics
        stage = "final" if trainer.epoch + 1 > trainer.epochs else f"epoch {trainer.epoch + 1}/{trainer.epochs}"
        print(
            f"[{stage}] mAP50={m.get('metrics/mAP50(B)', 0):.3f} "
            f"mAP50-95={m.get('metrics/mAP50-95(B)', 0):.3f} wall={wall:.0f}s",
            flush=True,
        )

    return log


def train_run(
    data: Path,
    *,
    run_dir: Path,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int,
    init: Path | None = None,
    resume: bool = False,
    workers: int = 0,
    threads: int = 2,
    cache: str | bool = "ram",
    patience: int = 100,
    warmup_epochs: float = 3.0,
) -> tuple[Path, float]:
    """Train (or resume) one run; returns (run save dir, cumulative wall seconds)."""
    from ultralytics import YOLO

    last = run_dir / "weights" / "last.pt"
    previous = 0.0
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        wall_file = run_dir / WALL_FILE
        previous = json.loads(wall_file.read_text())["wall_time_s"] if wall_file.exists() else 0.0
        model = YOLO(str(last))
    else:
        model = YOLO("yolov8n.yaml")
        if init:
            model.load(str(init))
    pin_threads(model, threads)
    ref: dict = {}
    start = time.time()
    model.add_callback("on_fit_epoch_end", _wall_logger(ref, previous, start))
    if resume:
        model.train(resume=True)
    else:
        model.train(
            data=str(data),
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            seed=seed,
            deterministic=True,
            workers=workers,
            cache=cache,
            device="cpu",
            amp=False,
            plots=False,
            pretrained=str(init) if init else False,
            project=str(run_dir.parent),
            name=run_dir.name,
            exist_ok=True,
            patience=patience,
            flipud=0.5,
            warmup_epochs=warmup_epochs,
            verbose=True,
        )
    return ref.get("dir", run_dir), previous + time.time() - start


def publish(save_dir: Path, dest: Path, record: dict) -> Path:
    """Write optimizer-free best.pt, results.csv and training.json into dest; returns the weights path.

    Stripping matters for runs stopped early: their checkpoints still carry optimizer state (~30 MB).
    """
    from ultralytics.utils.torch_utils import strip_optimizer

    dest.mkdir(parents=True, exist_ok=True)
    best = dest / "best.pt"
    strip_optimizer(save_dir / "weights" / "best.pt", s=str(best))
    shutil.copy2(save_dir / "results.csv", dest / "results.csv")
    (dest / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return best


def final_val_metrics(results_csv: Path) -> dict:
    """Validation metrics of the best epoch (highest mAP50-95, as Ultralytics selects best.pt)."""
    import csv

    rows = list(csv.DictReader(results_csv.open()))
    row = max(rows, key=lambda r: float(r["metrics/mAP50-95(B)"]))
    return {
        "best_epoch": int(row["epoch"]),
        "epochs_run": len(rows),
        **{k.split("/")[1].replace("(B)", ""): float(row[k]) for k in row if k.startswith("metrics/")},
    }


def log_command(run_dir: Path, argv: list[str] | None) -> list[str]:
    """Append this invocation to run_dir/commands.json so a resumed run records every command that shaped it."""
    cmd = shlex.join(["python", *sys.argv] if argv is None else ["python", "models/train.py", *argv])
    path = run_dir / "commands.json"
    commands = json.loads(path.read_text()) if path.exists() else []
    commands.append(cmd)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(commands, indent=2) + "\n")
    return commands


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", required=True, help="weights version, e.g. 1.0 -> models/weights/v1.0/")
    ap.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    ap.add_argument("--train", type=int, default=800, help="training images")
    ap.add_argument("--val", type=int, default=100, help="validation images")
    ap.add_argument("--test", type=int, default=150, help="held-out test images")
    ap.add_argument("--size", type=gd.parse_size, default=gd.DEFAULT_SIZE, help="generated image WxH")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--imgsz", type=int, default=320, help="training/inference image size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--init", type=Path, help="start from these weights (fine-tune) instead of random init")
    ap.add_argument("--warmup-epochs", type=float, default=3.0, help="LR warmup (shorten when fine-tuning)")
    ap.add_argument("--resume", action="store_true", help="continue the interrupted run of this --version")
    ap.add_argument(
        "--publish-only",
        action="store_true",
        help="publish the best checkpoint of an existing (e.g. stopped) run without training",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--weights-root", type=Path, default=MODELS_DIR / "weights")
    ap.add_argument("--runs-root", type=Path, default=MODELS_DIR / "runs")
    args = ap.parse_args(argv)

    counts = {"train": args.train, "val": args.val, "test": args.test}
    data = ensure_dataset(args.seed, counts, args.size)
    run_dir = args.runs_root / f"v{args.version}"
    commands = log_command(run_dir, argv)
    if args.publish_only:
        save_dir, wall = run_dir, json.loads((run_dir / WALL_FILE).read_text())["wall_time_s"]
    else:
        save_dir, wall = train_run(
            data,
            run_dir=run_dir,
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            seed=args.seed,
            init=args.init,
            resume=args.resume,
            threads=args.threads,
            warmup_epochs=args.warmup_epochs,
        )
    val_metrics = final_val_metrics(save_dir / "results.csv")
    record = {
        "version": args.version,
        "command": commands[0],
        "later_commands": commands[1:],
        "seed": args.seed,
        "dataset": {"name": data.parent.name, "size": list(args.size), "counts": counts},
        "model": "yolov8n.yaml",
        "init_weights": str(args.init) if args.init else None,
        "epochs": args.epochs,
        "epochs_completed": val_metrics["epochs_run"],
        "imgsz": args.imgsz,
        "batch": args.batch,
        "warmup_epochs": args.warmup_epochs,
        "threads": args.threads,
        "device": "cpu",
        "wall_time_s": round(wall, 1),
        "val_metrics": val_metrics,
    }
    best = publish(save_dir, args.weights_root / f"v{args.version}", record)
    print(json.dumps(record, indent=2))
    print(f"published {best}")


if __name__ == "__main__":
    main()
