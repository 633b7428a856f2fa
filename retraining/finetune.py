"""Fine-tune serving weights briefly on captured images mixed with a replay of the training data, and score them.

``fine_tune`` continues Ultralytics training from the weights being served (not from scratch):
on CPU, deterministic, plots off, no dataloader workers, the images cached in RAM and validation
only once, after the last epoch. ``map50_95`` scores weights on one split of a dataset the way
the project's numbers are measured: Ultralytics val at conf 0.001, NMS IoU 0.7, batch 16
(``models/evaluate.py --check-ultralytics``); on generator seed 9002's first 600 test images it
gives v2.0 0.827 mAP50-95 sharp and 0.740 under Gaussian blur sigma 4.

``RECIPE`` holds the training settings ``fine_tune`` applies unless overridden, chosen by
experiment for the defocus shift (see its comment).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
if str(MODELS_DIR) not in sys.path:
    sys.path.insert(0, str(MODELS_DIR))  # models/ modules import each other flat, as `python models/train.py` runs

from evaluate import ultralytics_val  # noqa: E402
from train import pin_threads  # noqa: E402

# Settings on top of models/train.py's (flipud 0.5, deterministic, amp off), picked by experiment.
RECIPE: dict = {
    "optimizer": "AdamW",
    "lr0": 0.0001,  # "auto" picks AdamW at 0.00143 here, which costs 0.05 on the clean holdout
    "warmup_epochs": 0.0,
    "mosaic": 0.0,  # mosaic shifts the picture statistics away from the line's whole frames
    "close_mosaic": 0,
    "flipud": 0.5,
}


@dataclass(frozen=True)
class FineTuneResult:
    weights: Path  # best.pt, optimizer stripped
    last: Path  # last.pt
    save_dir: Path  # the Ultralytics run folder (args.yaml, results.csv, weights/)
    wall_s: float  # seconds from YOLO() to the end of the final validation
    epochs: int  # epochs run
    metrics: dict  # Ultralytics' final val of best.pt on the data's val split: precision, recall, mAP50, mAP50-95


def _plain(metrics: dict) -> dict:
    """``metrics/mAP50-95(B)`` -> ``mAP50-95``, keeping only the detection metrics."""
    return {
        k.split("/", 1)[1].removesuffix("(B)"): round(float(v), 5)
        for k, v in metrics.items()
        if k.startswith("metrics/")
    }


def fine_tune(
    weights: Path,
    data_yaml: Path,
    out_dir: Path,
    epochs: int,
    imgsz: int,
    batch: int = 16,
    threads: int = 2,
    seed: int = 0,
    **overrides,
) -> FineTuneResult:
    """Train ``weights`` for ``epochs`` more on ``data_yaml``; the run goes to ``out_dir`` (replaced if there).

    ``overrides`` are Ultralytics train arguments that win over ``RECIPE`` and the defaults here
    (e.g. ``lr0``, ``freeze``, ``mosaic``, ``cache=False``).
    """
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    # Ultralytics logs every training to MLflow by itself when mlflow is importable (./mlruns, ./mlflow.db);
    # the retraining's own run is the record, so turn that off for this process only (no settings file change).
    dict.__setitem__(SETTINGS, "mlflow", False)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a stale results.csv would be appended to
    started = time.perf_counter()
    model = YOLO(str(weights))
    pin_threads(model, threads)
    args = {
        "data": str(Path(data_yaml).resolve()),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "seed": seed,
        "deterministic": True,
        "workers": 0,
        "cache": "ram",
        "device": "cpu",
        "amp": False,
        "plots": False,
        "val": False,  # validate once, after the last epoch
        "project": str(out_dir.parent),
        "name": out_dir.name,
        "exist_ok": True,
        "verbose": False,
        **RECIPE,
        **overrides,
    }
    model.train(**args)
    trainer = model.trainer
    return FineTuneResult(
        weights=Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last),
        last=Path(trainer.last),
        save_dir=Path(trainer.save_dir),
        wall_s=round(time.perf_counter() - started, 1),
        epochs=trainer.epoch + 1,
        metrics=_plain(trainer.metrics or {}),
    )


def map50_95(weights: Path, data_yaml: Path, split: str = "val", imgsz: int = 320, threads: int = 2) -> dict:
    """mAP50-95, mAP50, precision and recall of ``weights`` on one split, by Ultralytics val (conf 0.001, batch 16)."""
    return ultralytics_val(Path(weights), Path(data_yaml), imgsz, split, threads)
