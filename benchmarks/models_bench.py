"""What a second model costs: memory, and how two models share the machine's throughput.

One run, on private stacks started the way ``make up`` starts them, from the archives
``make archive`` builds (``yolo_v1.0.mar`` and ``parts_v1.0.mar``):

1. TorchServe serving ``yolo`` alone: memory of every process (RSS, and USS: what the process
   alone holds, so shared libraries are not counted twice), then ``yolo``'s throughput.
2. The same with ``parts`` loaded too: memory again, ``yolo`` alone, ``parts`` alone, and both
   at once, each model with its own clients.

``make bench-models`` is the entry point; the table goes to stdout and reports/models_bench.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.loadgen import Load
from operations.stack import ROOT, Stack, recorded_pid, running, set_current

STORE = ROOT / "serving" / "model-store"
REPORTS = ROOT / "reports"
IMAGES = {
    "yolo": sorted((ROOT / "samples").glob("*.jpg")),
    "parts": sorted((ROOT / "samples" / "gates" / "classify").glob("*/*.jpg")),
}


def memory(stack: Stack) -> dict[str, tuple[float, float]]:
    """RSS and USS in MiB: TorchServe's frontend, each model's workers together, and the gateway."""
    with stack.torchserve() as ts:
        pids = {
            name: [w["pid"] for entry in ts.describe(name, "/all") or [] for w in entry["workers"]]
            for name in ts.model_names()
        }
    launcher = psutil.Process(recorded_pid(stack, "torchserve"))
    workers = {pid for found in pids.values() for pid in found}
    frontend = [p.pid for p in [launcher, *launcher.children(recursive=True)] if p.pid not in workers]
    groups = {"TorchServe frontend (java + launcher)": frontend, "gateway": [recorded_pid(stack, "gateway")]}
    groups.update({f"{name} workers ({len(found)})": found for name, found in pids.items()})
    sizes = {}
    for label, members in groups.items():
        infos = [psutil.Process(pid).memory_full_info() for pid in members]
        sizes[label] = (sum(i.rss for i in infos) / 2**20, sum(i.uss for i in infos) / 2**20)
    return sizes


def throughput(stack: Stack, models: list[str], clients: int, seconds: float) -> dict[str, float]:
    """Images per second each model answered while all of ``models`` were loaded with ``clients`` each."""
    loads = {name: Load(stack.gateway_url, IMAGES[name], clients, path=f"/models/{name}/predict") for name in models}
    for load in loads.values():
        load.__enter__()
    try:
        for load in loads.values():
            load.wait_for(2 * clients)
        started = time.monotonic()
        time.sleep(seconds)
        finished = time.monotonic()
    finally:
        for load in loads.values():
            load.__exit__(None, None, None)
    rates = {}
    for name, load in loads.items():
        answered = [a for a in load.answers if started <= a.done <= finished]
        failed = [a for a in answered if a.status != 200]
        if failed:
            raise SystemExit(f"{name}: {len(failed)} of {len(answered)} requests failed during the measurement")
        rates[name] = len(answered) / (finished - started)
    return rates


def measure(models: list[str], clients: int, seconds: float) -> tuple[dict, list[tuple[str, dict]]]:
    with tempfile.TemporaryDirectory(prefix="models-bench-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        stack = Stack.private(Path(tmp) / "run", store)
        for name in models:
            archive = STORE / f"{name}_v1.0.mar"
            if not archive.is_file():
                raise SystemExit(f"{archive} is missing: run make archive")
            shutil.copy(archive, store)
            set_current(dataclasses.replace(stack, model_name=name), "1.0")
        with running(stack, "1.0"):
            runs = [(f"{name} alone", throughput(stack, [name], clients, seconds)) for name in models]
            if len(models) > 1:
                runs.append(("both at once", throughput(stack, models, clients, seconds)))
            sizes = memory(stack)  # after traffic: what the workers hold once they have served
    return sizes, runs


def table(alone: tuple[dict, list], both: tuple[dict, list], clients: int, seconds: float) -> str:
    lines = [
        "### Memory (MiB, after serving traffic)",
        "",
        "| process | yolo alone: RSS | USS | yolo + parts: RSS | USS |",
    ]
    lines.append("|---|---|---|---|---|")
    for label in dict.fromkeys([*alone[0], *both[0]]):
        one, two = alone[0].get(label), both[0].get(label)
        cells = [f"{v:.0f}" for v in one] if one else ["—", "—"]
        cells += [f"{v:.0f}" for v in two] if two else ["—", "—"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    total = [sum(v[i] for v in sizes.values()) for sizes in (alone[0], both[0]) for i in (0, 1)]
    lines.append(f"| **total** | {total[0]:.0f} | {total[1]:.0f} | {total[2]:.0f} | {total[3]:.0f} |")
    lines.append(f"| **the second model costs** | | | {total[2] - total[0]:+.0f} | {total[3] - total[1]:+.0f} |")
    lines += [
        "",
        f"### Throughput (images/s through the gateway, {clients} clients per model, {seconds:.0f} s each)",
        "",
    ]
    lines += ["| stack | run | yolo | parts | total |", "|---|---|---|---|---|"]
    for stack_label, (_, runs) in (("yolo alone", alone), ("yolo + parts", both)):
        for run_label, rates in runs:
            cells = [f"{rates[m]:.1f}" if m in rates else "—" for m in ("yolo", "parts")]
            lines.append(f"| {stack_label} | {run_label} | {' | '.join(cells)} | {sum(rates.values()):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="models_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per model (%(default)s)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each measurement (%(default)s)")
    args = parser.parse_args(argv)
    alone = measure(["yolo"], args.clients, args.seconds)
    both = measure(["yolo", "parts"], args.clients, args.seconds)
    text = table(alone, both, args.clients, args.seconds)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "models_bench.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
