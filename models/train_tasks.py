"""Train one small model per Ultralytics task on generated data and publish it with its deploy gate set.

For each task: generate the dataset (models/generate_tasks.py) unless a complete copy
exists, build the model from Ultralytics' YAML (random init, nothing downloaded), train
briefly on CPU, and publish

  models/weights/tasks/<task>/best.pt        optimizer-free weights (a few MB)
  models/weights/tasks/<task>/training.json  command, seed, data counts, epochs, imgsz, wall time, val metrics
  samples/gates/<task>/                       held-out labelled images + gate.yaml (task, metric, threshold)

The gate threshold is the gate metric (quality/tasks.py) of YOLO(best.pt).predict on
the gate set, minus 0.1, floored to a multiple of 0.05 and at most 0.9: a redeployed archive
must answer about as well as the model it was built from.

Run once and commit the outputs; tests use the committed weights and never retrain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import torch  # noqa: E402

from models import generate_tasks as gt  # noqa: E402
from quality import gate_scoring, gate_sets  # noqa: E402
from quality.tasks import METRICS, task_of  # noqa: E402
from quality.ultralytics_answers import reference_answers  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent
ROOT = MODELS_DIR.parent
GATE_COUNT = 10
GATE_SPLIT = "test"  # never trained or validated on: training uses "train", validation "val"

# Per task: Ultralytics model YAML, training image size, data counts and epochs, sized so each
# run takes a few minutes on 2 CPU cores. Gate images are larger than training images so the
# served path has to scale coordinates back to the original image.
SPECS = {
    "detect": {"model": "yolo26n.yaml", "imgsz": 256, "train": 300, "val": 50, "epochs": 20, "gate_size": (480, 360)},
    "segment": {
        "model": "yolo11n-seg.yaml",
        "imgsz": 256,
        "train": 300,
        "val": 50,
        "epochs": 20,
        "gate_size": (480, 360),
    },
    "pose": {
        "model": "yolo26n-pose.yaml",
        "imgsz": 256,
        "train": 300,
        "val": 50,
        "epochs": 20,
        "gate_size": (480, 360),
    },
    "obb": {"model": "yolo11n-obb.yaml", "imgsz": 256, "train": 300, "val": 50, "epochs": 20, "gate_size": (480, 360)},
    "classify": {
        "model": "yolo11n-cls.yaml",
        "imgsz": 96,
        "train": 600,
        "val": 100,
        "epochs": 40,
        "gate_size": (224, 224),
        # Ultralytics' classification training crops at random ((1 - scale, 1) of the area) and
        # erases patches: a crop often loses the part, and the nano classifier then stays at chance.
        # Full-frame crops (scale 0) and no erasing or RandAugment let it learn in a few CPU minutes.
        "overrides": {"erasing": 0.0, "auto_augment": None, "scale": 0.0},
    },
}


def pin_threads(model, threads: int) -> None:
    """Ultralytics resets torch threads to cpu_count-1 (1 on a 2-core box); put our choice back."""
    torch.set_num_threads(threads)
    for event in ("on_train_start", "on_predict_start", "on_val_start"):
        model.add_callback(event, lambda *_: torch.set_num_threads(threads))


def ensure_dataset(task: str, seed: int, counts: dict[str, int], root: Path) -> Path:
    """Return what ``data=`` takes for these parameters, generating the data only if no complete copy exists."""
    size = gt.SIZES.get(task, gt.DEFAULT_SIZE)
    out = root / gt.dataset_name(task, seed, counts, size)
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["counts"] == {s: counts.get(s, 0) for s in gt.SPLITS}:
        return out if task_of(task).classifies else out / "data.yaml"
    print(f"generating {out} ...", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return gt.generate(task, out, seed, counts, size)


def _metrics(metrics: dict) -> dict:
    """Ultralytics' 'metrics/mAP50(B)' style keys -> 'mAP50(B)', rounded."""
    return {k.split("/", 1)[1]: round(float(v), 4) for k, v in metrics.items() if k.startswith("metrics/")}


def train(task: str, data: Path, run_dir: Path, seed: int, epochs: int, imgsz: int, batch: int, threads: int):
    """Train one model from its YAML; returns (save dir, wall seconds, val metrics of best.pt)."""
    from ultralytics import YOLO

    model = YOLO(SPECS[task]["model"], task=task)
    flip = 0.0 if gt.DRAWINGS[task].chiral else 0.5  # a chiral part's mirror image is a different part
    pin_threads(model, threads)
    start = time.time()
    final: dict = {}

    def progress(trainer) -> None:
        shown = " ".join(f"{k}={v}" for k, v in _metrics(trainer.metrics).items())
        stage = "best.pt" if trainer.epoch >= trainer.epochs else f"epoch {trainer.epoch + 1}/{trainer.epochs}"
        print(f"[{task} {stage}] {shown} wall={time.time() - start:.0f}s", flush=True)

    model.add_callback("on_fit_epoch_end", progress)
    model.add_callback("on_train_end", lambda trainer: final.update(_metrics(trainer.metrics)))
    model.train(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        deterministic=True,
        workers=0,
        cache="ram",
        device="cpu",
        amp=False,
        plots=False,
        pretrained=False,
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
        fliplr=flip,
        flipud=flip,
        verbose=False,
        **SPECS[task].get("overrides", {}),
    )
    return Path(model.trainer.save_dir), time.time() - start, final


def publish_weights(save_dir: Path, dest: Path) -> Path:
    """Optimizer-free best.pt into dest (Ultralytics strips it when training ends; this covers stopped runs too)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    dest.mkdir(parents=True, exist_ok=True)
    best = dest / "best.pt"
    strip_optimizer(save_dir / "weights" / "best.pt", s=str(best))
    return best


def gate_images(gate_dir: Path) -> list[Path]:
    """The gate set's images in the order gate_sets.load_gate_set reads them."""
    return [item["image"] for item in gate_sets.load_gate_set(gate_dir)[1]]


def build_gate(task: str, weights: Path, gate_dir: Path, seed: int, imgsz: int) -> dict:
    """Write the held-out gate set, measure the model on it and write gate.yaml; returns the gate record."""
    shutil.rmtree(gate_dir, ignore_errors=True)
    gt.write_labelled_set(task, gate_dir, seed, GATE_SPLIT, GATE_COUNT, SPECS[task]["gate_size"])
    metric = METRICS[task]
    (gate_dir / "gate.yaml").write_text(f"task: {task}\nmetric: {metric}\nthreshold: 0.0\n")  # provisional, to load
    _, items = gate_sets.load_gate_set(gate_dir)
    answers = reference_answers(weights, [i["image"] for i in items], imgsz=imgsz, conf=0.25)
    measured = task_of(task).gate_metric(items, answers)
    threshold = gate_scoring.threshold_from(measured)
    (gate_dir / "gate.yaml").write_text(
        f"# {metric} of YOLO(best.pt).predict(conf=0.25, imgsz={imgsz}) here was {measured:.4f} when trained\n"
        f"# (models/train_tasks.py); threshold = that - 0.1, floored to 0.05, at most 0.9.\n"
        f"task: {task}\nmetric: {metric}\nthreshold: {threshold}\nmeasured: {round(measured, 4)}\nimgsz: {imgsz}\n"
    )
    predicted = sum(len(a.get("detections", a.get("classifications", [])[:1])) for a in answers)
    labelled = sum(len(i.get("objects", [None])) for i in items)
    return {
        "dir": str(gate_dir.relative_to(ROOT)),
        "images": len(items),
        "labelled": labelled,
        "predicted_at_conf_0.25": predicted,
        "metric": metric,
        "measured": round(measured, 4),
        "threshold": threshold,
    }


def carried_kpt_names(weights: Path) -> dict | None:
    """kpt_names as stored in the published checkpoint's model (what a handler reading best.pt will see)."""
    from ultralytics import YOLO

    names = getattr(YOLO(str(weights)).model, "kpt_names", None)
    return {int(k): list(v) for k, v in names.items()} if names else None


def run_task(task: str, args: argparse.Namespace, command: str) -> dict:
    spec = SPECS[task]
    counts = {"train": args.train or spec["train"], "val": args.val or spec["val"], "test": 0}
    epochs = args.epochs or spec["epochs"]
    data = ensure_dataset(task, args.seed, counts, args.datasets_root)
    dest = args.weights_root / task
    record_path = dest / "training.json"
    if args.gate_only:
        record = json.loads(record_path.read_text())
        weights = dest / "best.pt"
    else:
        save_dir, wall, val = train(
            task, data, args.runs_root / task, args.seed, epochs, spec["imgsz"], args.batch, args.threads
        )
        weights = publish_weights(save_dir, dest)
        shutil.copy2(save_dir / "results.csv", dest / "results.csv")
        record = {
            "task": task,
            "command": command,
            "seed": args.seed,
            "model": spec["model"],
            "dataset": {
                "name": Path(data).parent.name if not task_of(task).classifies else Path(data).name,
                "size": list(gt.SIZES.get(task, gt.DEFAULT_SIZE)),
                "counts": counts,
                "classes": list(gt.CLASSES[task]),
            },
            "epochs": epochs,
            "imgsz": spec["imgsz"],
            "batch": args.batch,
            "overrides": SPECS[task].get("overrides", {}),
            "threads": args.threads,
            "device": "cpu",
            "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__},
            "wall_time_s": round(wall, 1),
            "val_metrics_best_pt": val,
            "weights_bytes": weights.stat().st_size,
        }
    if task_of(task).keypoints:
        record["kpt_names_in_checkpoint"] = carried_kpt_names(weights)
    record["gate"] = build_gate(task, weights, args.gates_root / task, args.seed, spec["imgsz"])
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2), flush=True)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=gt.TASKS, action="append", help="task to train (repeatable; default all five)")
    ap.add_argument("--seed", type=int, default=0, help="data and training seed")
    ap.add_argument("--epochs", type=int, help="override the task's epochs")
    ap.add_argument("--train", type=int, help="override the task's training image count")
    ap.add_argument("--val", type=int, help="override the task's validation image count")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--gate-only", action="store_true", help="rebuild the gate sets from the published weights")
    ap.add_argument("--weights-root", type=Path, default=MODELS_DIR / "weights" / "tasks")
    ap.add_argument("--gates-root", type=Path, default=ROOT / "samples" / "gates")
    ap.add_argument("--datasets-root", type=Path, default=MODELS_DIR / "datasets")
    ap.add_argument("--runs-root", type=Path, default=MODELS_DIR / "runs" / "tasks")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "-m", "models.train_tasks", *(sys.argv[1:] if argv is None else argv)])
    for task in args.task or gt.TASKS:
        run_task(task, args, command)


if __name__ == "__main__":
    main()
