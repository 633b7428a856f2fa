"""`make test`: the whole suite in lanes that fail fast, the independent ones side by side.

Each test belongs to exactly one lane, by its markers (the first lane whose markers it carries):

    containers  the Compose and Swarm proofs (a Docker engine, images, stacks)
    calibration archives with a drift reference (2,400 images through the handler each), served live
    releases    deploys, canaries and rolls back on a stack of its own (scripts/deploy.sh, rollback.sh)
    stack       starts TorchServe, the gateway, Redis or a browser (``integration``)
    packaging   builds archives and runs them in-process, no server
    training    trains Ultralytics for an epoch or so
    fast        everything else (`make test-fast`)

Two tracks run side by side, each lane a pytest process of its own, one after the other in its track:
the fast lane (shown live), packaging, training and the stack lane beside the containers lane (much of
it waiting on Docker: builds, health checks, rolling updates), calibration and releases; the split is
the one measured to make the two tracks take about as long. A failed fast lane stops every lane not yet
started (a typo fails in about a minute); another failed lane stops its track and the other track
finishes, so one run shows every failure. Each other lane's output goes to ``var/test-lanes/<lane>.log``
and is printed whole when the lane ends; the closing table gives each lane's time and counts, and the
last line the totals.

    python -m tests.lanes               # every lane, as `make test`
    python -m tests.lanes fast stack    # only these lanes, in this order, one after the other
    python -m tests.lanes stack -- -k drift -x   # pytest's own options after --
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "var" / "test-lanes"

# (lane, its marker): a test runs in the first lane whose marker it carries, else in "fast"
PRECEDENCE = (
    ("containers", "containers"),
    ("calibration", "calibration"),
    ("releases", "releases"),
    ("stack", "integration"),
    ("packaging", "packaging"),
    ("training", "training"),
)


def lane_expressions() -> dict[str, str]:
    """lane -> the -m expression that selects its tests: every test lands in exactly one lane."""
    found, before = {}, []
    for lane, marker in PRECEDENCE:
        found[lane] = " and ".join([marker, *(f"not {m}" for m in before)])
        before.append(marker)
    found["fast"] = " and ".join(f"not {m}" for m in before)
    return found


LANES = lane_expressions()
# what `make test` runs: these tracks side by side, each lane after the one before it (split so that the two
# tracks take about as long); GATE, first, is shown live, and its failure stops every lane not yet started
TRACKS = (("fast", "packaging", "training", "stack"), ("containers", "calibration", "releases"))
GATE = "fast"
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


@dataclass
class Lane:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # its pytest and what that waited for (not containers, nor workers left unreaped)
    returncode: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        # pytest's 5: no test selected (a lane left empty by a -k or a marker change is not a failure)
        return self.returncode in (0, 5)


def pytest_command(lane: str, extra: list[str]) -> list[str]:
    slowest = "--durations=25"  # each lane's slowest steps, to see where its time goes
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", slowest, "-m", LANES[lane], *extra]


def summary_counts(output: str) -> dict[str, int]:
    """The counts of pytest's closing line (``12 passed, 1 skipped in 3.2s``)."""
    closing = [line for line in output.splitlines() if re.search(r" in [\d.]+s", line) and COUNTS.search(line)]
    found: dict[str, int] = {}
    for number, word in COUNTS.findall(closing[-1] if closing else ""):
        found["errors" if word.startswith("error") else word] = int(number)
    return found


def run_lane(lane: str, extra: list[str], live: bool, print_lock: threading.Lock) -> Lane:
    """One lane as a pytest process: shown live, or into its log file and printed whole when it ends."""
    result = Lane(lane)
    started = time.monotonic()
    command = pytest_command(lane, extra)
    with print_lock:
        print(f"\n=== lane {lane}: {' '.join(command[1:])}", flush=True)
    if live:  # streamed as it comes, and kept for the counts
        lines = []
        with subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            for line in process.stdout:
                lines.append(line)
                with print_lock:
                    print(line, end="", flush=True)
            result.cpu_seconds = reap(process)
        output = "".join(lines)
    else:
        log = LOGS / f"{lane}.log"
        with (
            log.open("w") as handle,
            subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT) as process,
        ):
            result.cpu_seconds = reap(process)
        output = log.read_text()
        with print_lock:
            print(f"\n=== lane {lane} ended ({log.relative_to(ROOT)}):\n{output}", end="", flush=True)
    result.seconds = time.monotonic() - started
    result.returncode = process.returncode
    result.counts = summary_counts(output)
    return result


def reap(process: subprocess.Popen) -> float:
    """Wait for ``process`` and return the CPU seconds it and the descendants it waited for used."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def cpu_times() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def run_track(
    lanes: tuple[str, ...],
    extra: list[str],
    results: list[Lane],
    print_lock: threading.Lock,
    stop: threading.Event,
    live: tuple[str, ...] = (),
) -> None:
    """The lanes one after the other, until one fails or ``stop`` is set; a failed ``GATE`` sets ``stop``."""
    for lane in lanes:
        if stop.is_set():
            return
        done = run_lane(lane, extra, live=lane in live, print_lock=print_lock)
        results.append(done)
        if not done.ok:
            if lane == GATE:
                stop.set()
            return


def table(results: list[Lane], wall: float, busy: float) -> str:
    """Each lane's time, CPU seconds and counts; the wall clock and how busy the machine's CPUs were meanwhile."""
    rows = ["| lane | time | cpu | passed | failed | skipped | result |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        failed = r.counts.get("failed", 0) + r.counts.get("errors", 0)
        verdict = "ok" if r.ok else f"FAILED (exit {r.returncode})"
        rows.append(
            f"| {r.name} | {r.seconds:.0f} s | {r.cpu_seconds:.0f} s | {r.counts.get('passed', 0)} | {failed} | "
            f"{r.counts.get('skipped', 0)} | {verdict} |"
        )
    rows.append(f"| all (wall clock) | {wall:.0f} s | {busy:.0%} of {os.cpu_count()} CPUs busy | | | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lanes", description=__doc__.split("\n\n")[0])
    parser.add_argument("lanes", nargs="*", help=f"lanes to run one after the other: {', '.join(LANES)}")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    unknown = [lane for lane in args.lanes if lane not in LANES]
    if unknown:
        parser.error(f"no lane {', '.join(unknown)}; the lanes are {', '.join(LANES)}")
    LOGS.mkdir(parents=True, exist_ok=True)
    started, ticks = time.monotonic(), cpu_times()
    lock = threading.Lock()
    results: list[Lane] = []
    stop = threading.Event()
    if args.lanes:
        run_track(tuple(args.lanes), extra, results, lock, stop, live=tuple(args.lanes))
    else:
        threads = [
            threading.Thread(target=run_track, args=(track, extra, results, lock, stop, (GATE,)), name="+".join(track))
            for track in TRACKS
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.monotonic() - started
    busy, total = (now - then for now, then in zip(cpu_times(), ticks, strict=True))
    print(f"\n{table(results, wall, busy / max(total, 1))}\n")
    passed = sum(r.counts.get("passed", 0) for r in results)
    failed = sum(r.counts.get("failed", 0) + r.counts.get("errors", 0) for r in results)
    skipped = sum(r.counts.get("skipped", 0) for r in results)
    everything = not args.lanes and len(results) == len(LANES)
    ok = all(r.ok for r in results) and (everything or bool(args.lanes))
    if not ok and failed == 0:
        failed = 1  # a lane that crashed or never ran counts as a failure
    print(f"lanes: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.exit(main())
