"""Whether a version may serve: the smoke check every version passes and the quality gate on its gate set.

Both ask the version itself through ``predict`` (image bytes in, the handler's answer out), so the
same checks run against TorchServe's per-version endpoint in a deploy and anywhere else.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from quality.gate_sets import gate_spec, load_gate_set
from quality.tasks import task_of
from serving.yolo_contract import answer_problems

Predict = Callable[[bytes], dict]


def smoke_check(predict: Predict, version: str) -> list[str]:
    """Every version, gated or not, must answer a synthetic image with the contract's shape."""
    width, height = 333, 250  # odd sizes: the letterbox and the way back both have to be right
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    answer = predict(buffer.getvalue())
    return [f"smoke check: {p}" for p in answer_problems(answer, version, width, height)]


def quality_gate(predict: Predict, version: str, gate_dir: Path) -> tuple[dict, list[str]]:
    """Score ``version`` alone on its gate set with the task's metric; problems when it falls short."""
    spec = gate_spec(gate_dir)
    task, items = load_gate_set(gate_dir)
    answers, problems = [], []
    for item in items:
        answer = predict(item["image"].read_bytes())
        problems += [
            f"{item['image'].name}: {p}" for p in answer_problems(answer, version, item["width"], item["height"])
        ]
        answers.append(answer)
    value = task_of(task).gate_metric(items, answers)
    result = {"task": task, "metric": spec.get("metric"), "value": round(value, 4), "threshold": spec["threshold"]}
    if value < float(spec["threshold"]):
        problems.append(f"{spec.get('metric', 'score')} {value:.3f} on {len(items)} gate images < {spec['threshold']}")
    return result, problems
