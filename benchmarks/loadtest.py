"""Run the Locust suite headless against a running stack; report requests, failures and memory.

`make loadtest USERS=.. SPAWN_RATE=.. DURATION=..` calls this. Locust writes its CSV and
HTML reports under ``reports/``; meanwhile the resident memory of the TorchServe workers,
the TorchServe frontend and the gateway is sampled from the PIDs the stack recorded in
its run directory, and written to ``<prefix>_memory.json``. The exit status is Locust's:
non-zero when any request failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from operations.stack import ROOT, VENV_BIN, Stack, recorded_pid

LOCUSTFILE = ROOT / "tests" / "load" / "locustfile.py"
USER_CLASSES = ("SinglePredictUser", "BatchPredictUser", "MixedUser")


def stack_processes(run_dir: Path) -> dict[str, list[psutil.Process]]:
    """The stack's processes by role, found from the PID files ``operations/stack.py`` writes."""
    stack = Stack(run_dir=run_dir)
    roles: dict[str, list[psutil.Process]] = {"workers": [], "frontend": [], "gateway": []}
    for service in ("torchserve", "gateway"):
        pid = recorded_pid(stack, service)
        if pid is None:
            continue
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if service == "gateway":
                roles["gateway"].append(proc)
            elif "model_service_worker" in cmdline:
                roles["workers"].append(proc)
            elif "java" in proc.name():
                roles["frontend"].append(proc)
    return roles


class MemorySampler:
    """Samples the summed RSS of each role every ``interval`` seconds in a background thread.

    Worker processes are looked up again on every sample, so a restarted worker is counted.
    """

    def __init__(self, run_dir: Path, interval: float = 1.0):
        self.run_dir = run_dir
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample: dict[str, float] = {"t": time.monotonic()}
            for role, procs in stack_processes(self.run_dir).items():
                rss = []
                for proc in procs:
                    try:
                        rss.append(proc.memory_info().rss)
                    except psutil.Error:
                        continue
                sample[role] = sum(rss) / 2**20
                sample[f"{role}_count"] = len(rss)
            self.samples.append(sample)
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, dict[str, float]]:
        """Peak RSS per role, and growth: median of the last quarter minus median of the first quarter (MiB)."""
        report = {}
        for role in ("workers", "frontend", "gateway"):
            values = [s[role] for s in self.samples if s.get(f"{role}_count")]
            if not values:
                continue
            quarter = max(1, len(values) // 4)
            report[role] = {
                "processes": max(s[f"{role}_count"] for s in self.samples),
                "peak_rss_mib": round(max(values), 1),
                "start_rss_mib": round(statistics.median(values[:quarter]), 1),
                "end_rss_mib": round(statistics.median(values[-quarter:]), 1),
                "growth_mib": round(statistics.median(values[-quarter:]) - statistics.median(values[:quarter]), 1),
                "samples": len(values),
            }
        return report


def read_totals(stats_csv: Path) -> dict[str, float]:
    """The 'Aggregated' row of Locust's stats CSV."""
    with stats_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                return {
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50_ms": float(row["50%"]),
                    "p95_ms": float(row["95%"]),
                    "p99_ms": float(row["99%"]),
                }
    raise ValueError(f"{stats_csv} has no Aggregated row")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="gateway URL (default: %(default)s)")
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default: %(default)s)")
    parser.add_argument("--spawn-rate", type=float, default=5, help="users started per second (default: %(default)s)")
    parser.add_argument("--duration", default="2m", help="run time, e.g. 10s, 2m (default: %(default)s)")
    parser.add_argument(
        "--user-class",
        action="append",
        choices=USER_CLASSES,
        help="user class to run, repeatable (default: MixedUser)",
    )
    parser.add_argument("--run-dir", type=Path, default=ROOT / "var", help="the stack's run dir with its PID files")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports", help="report directory (default: reports/)")
    parser.add_argument("--prefix", default="loadtest", help="report file name prefix (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.reports.mkdir(parents=True, exist_ok=True)
    prefix = args.reports / args.prefix
    cmd = [
        str(VENV_BIN / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        args.host,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.duration,
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--exit-code-on-error",
        "1",
        *(args.user_class or ["MixedUser"]),
    ]
    print("$ " + " ".join(cmd), flush=True)
    with MemorySampler(args.run_dir) as sampler:
        code = subprocess.run(cmd, cwd=ROOT).returncode
    totals = read_totals(Path(f"{prefix}_stats.csv"))
    memory = sampler.summary()
    Path(f"{prefix}_memory.json").write_text(json.dumps({"totals": totals, "memory": memory}, indent=2) + "\n")
    print(
        f"\nrequests {totals['requests']}, failures {totals['failures']}, {totals['rps']:.1f} req/s, "
        f"p50 {totals['p50_ms']:.0f} ms, p95 {totals['p95_ms']:.0f} ms, p99 {totals['p99_ms']:.0f} ms"
    )
    for role, stats in memory.items():
        print(
            f"{role:<9} {stats['processes']} process(es): peak RSS {stats['peak_rss_mib']} MiB, "
            f"growth {stats['growth_mib']:+} MiB ({stats['start_rss_mib']} -> {stats['end_rss_mib']})"
        )
    print(f"reports: {prefix}_stats.csv, {prefix}.html, {prefix}_memory.json")
    if code == 0 and totals["failures"]:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
