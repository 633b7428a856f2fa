"""Re-run the measurements behind REPORT.md and rewrite its measured sections.

Every block between ``<!-- measured:NAME -->`` and ``<!-- /measured:NAME -->`` is replaced
by the output of a real run on this machine: packaging, a private stack started the way
``make up`` starts it, real curl requests (direct and through the gateway, good and bad
input), a deploy and a rollback under concurrent load, a Locust run and the benchmark.
Raw captures also land in ``reports/``. ``make report`` is the entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil

from benchmarks.loadgen import Load
from operations import releases
from operations.history import print_history
from operations.stack import ROOT, Stack, running

REPORT = ROOT / "REPORT.md"
REPORTS = ROOT / "reports"
SAMPLES = ROOT / "samples"
PY = sys.executable
CLIENTS = 8


def fence(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)


def shown(cmd: list[str], secrets: dict[str, str]) -> str:
    """The command as a reader would type it, with secrets replaced by shell variables."""
    text = shlex.join(cmd)
    for value, name in secrets.items():
        text = text.replace(value, f"${name}")
    return f"$ {text}"


def curl(cmd: list[str], secrets: dict[str, str] | None = None, limit: int = 1400) -> str:
    result = run(["curl", "-sS", *cmd])
    body = result.stdout.strip()
    if body.startswith("{"):
        body = json.dumps(json.loads(body), indent=1)
    if len(body) > limit:
        body = body[:limit] + "\n... (cut)"
    return f"{shown(['curl', '-sS', *cmd], secrets or {})}\n{body}{result.stderr.strip()}"


def section_packaging(store: Path) -> str:
    parts = []
    for version in ("1.0", "2.0"):
        cmd = [
            "bash",
            "scripts/package_mar.sh",
            "--weights",
            f"models/weights/v{version}/best.pt",
            "--version",
            version,
            "--gate-data",
            "samples",
            "--store",
            str(store),
        ]
        result = run(cmd)
        if result.returncode:
            raise SystemExit(f"packaging {version} failed:\n{result.stdout}\n{result.stderr}")
        output = result.stdout.replace(str(store), "serving/model-store")
        parts.append(shown(cmd, {str(store): "STORE"}).replace("$STORE", "serving/model-store") + "\n" + output)
    again = run(["bash", "scripts/package_mar.sh", "--version", "1.0", "--store", str(store)])
    parts.append(
        "$ bash scripts/package_mar.sh --version 1.0   # again, without --force\n"
        + again.stderr.replace(str(store), "serving/model-store")
        + f"(exit {again.returncode})"
    )
    with zipfile.ZipFile(store / "yolo_v2.0.mar") as mar:
        listing = "\n".join(f"{info.file_size:>10}  {info.filename}" for info in mar.infolist())
        manifest = mar.read("MAR-INF/MANIFEST.json").decode()
        config = mar.read("model-config.yaml").decode()
    return "\n\n".join(
        [
            fence("\n\n".join(parts), "console"),
            "Inside `yolo_v2.0.mar` (bytes, name):",
            fence(listing),
            "`MAR-INF/MANIFEST.json`:",
            fence(manifest, "json"),
            "`model-config.yaml` as packaged (TorchServe's keys plus the handler's section):",
            fence(config, "yaml"),
        ]
    )


def processes(stack: Stack) -> str:
    rows = ["  PID     RSS MB  command"]
    for service in ("torchserve", "gateway"):
        pid = int((stack.pid_file(service)).read_text())
        parent = psutil.Process(pid)
        for proc in [parent, *parent.children(recursive=True)]:
            try:
                cmd = " ".join(proc.cmdline())
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            cmd = cmd.replace(str(ROOT) + "/", "").replace(str(stack.run_dir), "$RUN")
            rows.append(f"{proc.pid:>6} {rss:>9.0f}  {cmd[:150]}")
    return "\n".join(rows)


def section_deployment(stack: Stack, startup: str) -> str:
    config = (stack.ts_dir / "config.properties").read_text().replace(str(stack.model_store.resolve()), "$STORE")
    keys = json.loads(stack.key_file.read_text())
    key_shape = {kind: sorted(entry) for kind, entry in keys.items()}
    return "\n\n".join(
        [
            "Start-up (`operations.stack.up`, what `make up` runs; private ports for this run):",
            fence(startup, "console"),
            "Processes right after start (TorchServe's Python launcher, its Java frontend and the model workers; "
            "the gateway):",
            fence(processes(stack)),
            "The rendered TorchServe config:",
            fence(config, "properties"),
            f"`key_file.json` holds these fields per key (values not shown): `{json.dumps(key_shape)}`.",
        ]
    )


def section_requests(stack: Stack) -> str:
    keys = json.loads(stack.key_file.read_text())
    inference = keys["inference"]["key"]
    secrets = {inference: "INFERENCE_KEY"}
    sample = "samples/mixed_01.jpg"
    ts = stack.inference_url
    gw = stack.gateway_url
    good = [
        curl(["-X", "POST", f"{ts}/predictions/yolo", "-T", sample]),
        curl(
            ["-X", "POST", f"{ts}/predictions/yolo", "-H", f"Authorization: Bearer {inference}", "-T", sample], secrets
        ),
        curl(["-F", f"file=@{sample}", f"{gw}/predict"]),
        curl(["-F", f"file=@{sample}", f"{gw}/predict?conf=0.5&classes=stain"]),
        curl([f"{gw}/models"]),
        curl([f"{gw}/health"]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp, "notes.jpg")
        text.write_text("this is not an image\n")
        big = Path(tmp, "big.jpg")
        big.write_bytes(b"\xff" * 7_000_000)
        truncated = Path(tmp, "truncated.jpg")
        truncated.write_bytes((ROOT / sample).read_bytes()[:5000])
        empty = Path(tmp, "empty.jpg")
        empty.write_bytes(b"")
        cases = [
            ("empty file", ["-F", f"file=@{empty}", f"{gw}/predict"]),
            ("text file named .jpg", ["-F", f"file=@{text}", f"{gw}/predict"]),
            ("truncated JPEG", ["-F", f"file=@{truncated}", f"{gw}/predict"]),
            ("wrong field name", ["-F", f"image=@{ROOT / sample}", f"{gw}/predict"]),
            ("no multipart", ["--data-binary", f"@{ROOT / sample}", f"{gw}/predict"]),
            ("7 MB upload", ["-F", f"file=@{big}", f"{gw}/predict"]),
            ("bad parameter", ["-F", f"file=@{ROOT / sample}", f"{gw}/predict?conf=2"]),
            ("unknown class", ["-F", f"file=@{ROOT / sample}", f"{gw}/predict?classes=rust"]),
            ("version not loaded", ["-F", f"file=@{ROOT / sample}", f"{gw}/predict?version=9.9"]),
        ]
        rows = ["| input | status | body |", "|---|---|---|"]
        for label, args in cases:
            result = run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args])
            body, _, status = result.stdout.rpartition("\n")
            rows.append(f"| {label} | {status} | `{body.replace(tmp, '').replace(str(ROOT) + '/', '')}` |")
    health = curl([f"{gw}/health"])
    return "\n\n".join(
        [
            "TorchServe directly, without and with the inference token, then the same image through the gateway:",
            fence("\n\n".join(good), "console"),
            "Bad input through the gateway (each a real `curl`; status and JSON body):",
            "\n".join(rows),
            "The stack afterwards:",
            fence(health, "console"),
        ]
    )


def under_load(stack: Stack, action: Callable[[], None]) -> tuple[dict, float, list[str], Load]:
    with Load(stack.gateway_url, sorted(SAMPLES.glob("*.jpg")), CLIENTS) as load:
        load.wait_for(2 * CLIENTS)
        started = time.monotonic()
        action()
        finished = time.monotonic()
        load.wait_for(2 * CLIENTS, after=finished)

    before = [a for a in load.answers if a.done < started]
    after = [a for a in load.answers if a.sent > finished]
    during = [a for a in load.answers if a not in before and a not in after]
    timeline = [
        f"{label}: {json.dumps(dict(sorted(Counter(a.version for a in answers).items())))}"
        for label, answers in (
            ("finished before the call started", before),
            ("in flight while it ran          ", during),
            ("sent after it returned          ", after),
        )
    ]
    return dict(load.statuses()), finished - started, timeline, load


def section_switch(stack: Stack, action: str) -> str:
    lines: list[str] = []
    if action == "deploy":
        command = "$ bash scripts/deploy.sh 2.0"
        call = lambda: releases.deploy(stack, "2.0", out=lines.append)  # noqa: E731
    else:
        command = "$ bash scripts/rollback.sh"
        call = lambda: releases.rollback(stack, out=lines.append)  # noqa: E731
    statuses, seconds, timeline, load = under_load(stack, call)
    failed = sum(count for status, count in statuses.items() if status != 200)
    return "\n\n".join(
        [
            fence(command + "\n" + "\n".join(lines), "console"),
            f"Under load from {CLIENTS} concurrent clients posting the sample images: **{len(load.answers)} requests, "
            f"{failed} failed** (statuses {statuses}); the {action} call took **{seconds:.2f} s**. "
            "Which version answered (requests counted by version):",
            fence("\n".join(timeline)),
        ]
    )


def section_history(stack: Stack) -> str:
    lines: list[str] = []
    print_history(stack, out=lines.append)
    return fence("$ make history\n" + "\n".join(lines), "console")


def section_loadtest(stack: Stack, users: int, duration: str) -> str:
    cmd = [PY, "-m", "benchmarks.loadtest", "--host", stack.gateway_url, "--users", str(users), "--spawn-rate", "5"]
    cmd += ["--duration", duration, "--run-dir", str(stack.run_dir), "--reports", str(REPORTS)]
    result = run(cmd, timeout=1800)
    stats = REPORTS / "loadtest_stats.csv"
    if not stats.is_file():
        raise SystemExit(f"loadtest failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    rows = ["| request | count | failures | req/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    with stats.open() as handle:
        for row in csv.DictReader(handle):
            name = f"{row['Type']} {row['Name']}".strip()
            rows.append(
                f"| {name} | {row['Request Count']} | {row['Failure Count']} | {float(row['Requests/s']):.1f} | "
                f"{row['50%']} | {row['95%']} | {row['99%']} |"
            )
    memory = json.loads((REPORTS / "loadtest_memory.json").read_text())["memory"]
    mem_rows = ["| process | peak RSS MiB | growth MiB (last quarter - first quarter) |", "|---|---|---|"]
    mem_rows += [f"| {role} | {m['peak_rss_mib']:.0f} | {m['growth_mib']:+.1f} |" for role, m in memory.items()]
    return "\n\n".join(
        [
            fence(f"$ make loadtest USERS={users} SPAWN_RATE=5 DURATION={duration}\n(exit {result.returncode})"),
            "\n".join(rows),
            "Memory sampled every second during the run (TorchServe workers together, its Java frontend, the gateway):",
            "\n".join(mem_rows),
        ]
    )


def section_bench(sweep: bool) -> str:
    name, command = ("sweep", "make bench SWEEP=1") if sweep else ("bench", "make bench")
    result = run([PY, "-m", "benchmarks.bench", *(["--sweep"] if sweep else [])], timeout=3000)
    table = REPORTS / f"{name}.md"
    if result.returncode or not table.is_file():
        raise SystemExit(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    text = f"`$ {command}`\n\n" + table.read_text()
    return text if sweep else text + "\n\n" + targets(json.loads((REPORTS / "bench.json").read_text())["ratios"])


def targets(ratios: dict[str, float]) -> str:
    """The issue's performance targets, judged on this run's ratios."""
    checks = [
        ("gateway adds <= 3 ms at p50 over direct TorchServe, concurrency 1", "gateway_p50_overhead_ms_c1", "<=", 3.0),
        ("gateway >= 90% of in-process throughput at saturation", "gateway_over_in_process_saturation", ">=", 0.9),
        (
            "default >= 2.5x the baseline's throughput, through the gateway",
            "default_over_baseline_gateway_saturation",
            ">=",
            2.5,
        ),
        (
            "default >= 2.5x the baseline's throughput, TorchServe direct",
            "default_over_baseline_direct_saturation",
            ">=",
            2.5,
        ),
        ("ours <= the best peer's p50 at concurrency 1 (ratio)", "ours_p50_over_best_peer_c1", "<=", 1.0),
        ("ours >= 1.3x the best peer's images/s at saturation", "ours_over_best_peer_saturation", ">=", 1.3),
        ("whole path's CPU per image <= 1.6x bare inference", "ours_cpu_over_bare_inference_saturation", "<=", 1.6),
    ]
    rows = ["| target | measured | met |", "|---|---|---|"]
    for label, key, op, bound in checks:
        value = ratios[key]
        met = value <= bound if op == "<=" else value >= bound
        rows.append(f"| {label} | {value} | {'yes' if met else '**no**'} |")
    return "\n".join(rows)


def section_model() -> str:
    rows = [
        "| version | test mAP50 | mAP50-95 | precision | recall | epochs | imgsz | training wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for version in ("1.0", "2.0"):
        folder = ROOT / "models" / "weights" / f"v{version}"
        training = json.loads((folder / "training.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())["overall"]
        rows.append(
            f"| {version} | {metrics['mAP50']:.3f} | {metrics['mAP50-95']:.3f} | {metrics['precision']:.3f} | "
            f"{metrics['recall']:.3f} | {training['epochs']} | {training['imgsz']} | "
            f"{training['wall_time_s'] / 60:.1f} min |"
        )
    return "\n".join(rows)


def marker_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- measured:{name} -->\n).*?(<!-- /measured:{name} -->)", re.S)


def replace_section(text: str, name: str, body: str) -> str:
    return marker_pattern(name).sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make report", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20, help="Locust users (default: %(default)s)")
    parser.add_argument("--duration", default="2m", help="Locust run time (default: %(default)s)")
    parser.add_argument("--skip-bench", action="store_true", help="keep the benchmark section as it is")
    args = parser.parse_args(argv)
    names = ["model", "packaging", "deployment", "requests", "redeploy", "rollback", "history", "loadtest"]
    names += [] if args.skip_bench else ["sweep", "bench"]
    missing = [name for name in names if not marker_pattern(name).search(REPORT.read_text())]
    if missing:
        raise SystemExit(f"REPORT.md lacks the measured blocks {missing}")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    REPORTS.mkdir(exist_ok=True)
    sections: dict[str, str] = {"model": section_model()}
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        store = Path(tmp, "model-store")
        sections["packaging"] = section_packaging(store)
        stack = Stack.private(Path(tmp, "run"), store)
        capture = io.StringIO()
        with contextlib.redirect_stdout(capture), running(stack, "1.0"):
            sections["deployment"] = section_deployment(stack, capture.getvalue().replace(str(ROOT) + "/", ""))
            sections["requests"] = section_requests(stack)
            sections["redeploy"] = section_switch(stack, "deploy")
            sections["rollback"] = section_switch(stack, "rollback")
            sections["history"] = section_history(stack)
            sections["loadtest"] = section_loadtest(stack, args.users, args.duration)
    if not args.skip_bench:
        sections["sweep"] = section_bench(sweep=True)
        sections["bench"] = section_bench(sweep=False)
    text = REPORT.read_text()
    for name, body in sections.items():
        text = replace_section(text, name, body)
    REPORT.write_text(text)
    print(f"REPORT.md: rewrote {', '.join(sections)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
