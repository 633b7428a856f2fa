"""What a ``make bench`` run's numbers say: its ratios and its markdown (reports/bench.md, reports/sweep.md).

One concern: reading the report dict that benchmarks/bench.py measures (one entry per
configuration, each path's ``Result.summary()`` at c1 and saturation) into the ratios REPORT.md's
targets are judged on, and into tables of throughput and latency, CPU per image by process role,
ours against the peers, and memory.
"""

from __future__ import annotations


def ratio(num: float, den: float) -> float:
    return round(num / den, 3) if den else float("nan")


def ratios(entry: dict) -> dict:
    """One configuration's paths against each other: what TorchServe costs over in-process, the gateway over it."""
    a, b, c = entry["in_process"], entry["direct"], entry["gateway"]
    return {
        "direct_over_in_process_c1": ratio(b["c1"]["images_per_s"], a["c1"]["images_per_s"]),
        "direct_over_in_process_saturation": ratio(b["saturation"]["images_per_s"], a["saturation"]["images_per_s"]),
        "gateway_over_direct_c1": ratio(c["c1"]["images_per_s"], b["c1"]["images_per_s"]),
        "gateway_over_direct_saturation": ratio(c["saturation"]["images_per_s"], b["saturation"]["images_per_s"]),
        "gateway_over_in_process_saturation": ratio(c["saturation"]["images_per_s"], a["saturation"]["images_per_s"]),
        "gateway_p50_overhead_ms_c1": round(c["c1"]["p50_ms"] - b["c1"]["p50_ms"], 2),
    }


def peer_ratios(ours: dict, peers: dict) -> dict:
    """Ours (the gateway path of the default configuration) against the best peer at each level."""
    best_c1 = min(peer["c1"]["p50_ms"] for peer in peers.values())
    best_saturation = max(peer["saturation"]["images_per_s"] for peer in peers.values())
    return {
        "ours_p50_over_best_peer_c1": ratio(ours["c1"]["p50_ms"], best_c1),
        "ours_over_best_peer_saturation": ratio(ours["saturation"]["images_per_s"], best_saturation),
    }


def bench_ratios(default: dict, baseline: dict) -> dict:
    """The ratios of a ``make bench`` run: the default's paths, the default over the baseline, ours over peers."""
    return {
        **ratios(default),
        "default_over_baseline_gateway_saturation": ratio(
            default["gateway"]["saturation"]["images_per_s"], baseline["gateway"]["saturation"]["images_per_s"]
        ),
        "default_over_baseline_direct_saturation": ratio(
            default["direct"]["saturation"]["images_per_s"], baseline["direct"]["saturation"]["images_per_s"]
        ),
        **peer_ratios(default["gateway"], default["peers"]),
        "ours_cpu_over_bare_inference_saturation": ratio(
            server_cpu(default["gateway"]["saturation"]),
            default["in_process"]["bare_inference"]["cpu_ms_per_image"]["inference"],
        ),
    }


def server_cpu(summary: dict) -> float:
    """CPU per image of every serving process (all roles but the load generator)."""
    return sum(v for role, v in summary["cpu_ms_per_image"].items() if role != "load generator")


def peers_table(entry: dict) -> list[str]:
    """Ours vs peers: the same load generator, bodies and model file, one after the other."""
    lines = [
        "Ours vs peers (ours = the gateway path of the default configuration; each peer serves the same "
        "OpenVINO model from the default archive, `-pt` the eager weights; benchmarks/peers.py). CPU per image at "
        "saturation, server process tree and load generator:",
        "",
        "| server | c1 p50 ms | c1 img/s | saturation img/s | saturation p50 ms | errors | "
        "server CPU ms/img | load gen. CPU ms/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = {"ours (gateway)": entry["gateway"], **entry["peers"]}
    for name, row in rows.items():
        c1, sat = row["c1"], row["saturation"]
        cpu = sat["cpu_ms_per_image"]
        lines.append(
            f"| {name} | {c1['p50_ms']:.1f} | {c1['images_per_s']:.1f} | {sat['images_per_s']:.1f} | "
            f"{sat['p50_ms']:.1f} | {c1['errors'] + sat['errors']} | {server_cpu(sat):.2f} | "
            f"{cpu.get('load generator', float('nan')):.2f} |"
        )
    return lines


def markdown(report: dict) -> str:
    lines = [
        f"Benchmark: `{report['command']}` on {report['cores']} cores, {report['samples']} sample images "
        f"({report['started']}); saturation = {report['concurrency']} concurrent clients "
        f"(in-process: batches of {report['concurrency']}); {report['seconds']:g} s per measurement.",
        "",
        "| config | path | conc. 1 img/s | p50 | p95 | p99 | saturation img/s | p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["runs"]:
        for path in ("in_process", "direct", "gateway"):
            if path not in entry:
                continue
            row = [f"{entry['config']['name']} ({entry['label']})", path]
            for level in ("c1", "saturation"):
                s = entry[path].get(level)
                row += (
                    [f"{s['images_per_s']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}"]
                    if s
                    else ["-"] * 4
                )
            lines.append("| " + " | ".join(row) + " |")
    if report.get("ratios"):
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in report["ratios"].items()]
    lines += ["", *cpu_table(report["runs"], report["cores"])]
    for entry in report["runs"]:
        if entry.get("peers"):
            lines += ["", *peers_table(entry)]
    lines += ["", "| config | role | processes | peak RSS MiB | growth MiB |", "|---|---|---|---|---|"]
    for entry in report["runs"]:
        for role, mem in entry.get("memory", {}).items():
            lines.append(
                f"| {entry['config']['name']} | {role} | {mem['processes']} | {mem['peak_rss_mib']} | "
                f"{mem['growth_mib']:+} |"
            )
    return "\n".join(lines) + "\n"


def cpu_table(runs: list[dict], cores: int) -> list[str]:
    """Where the CPU goes at saturation: milliseconds of CPU per image served, by process role."""
    roles = ["in-process", "workers", "frontend", "gateway", "load generator"]
    lines = [
        "CPU time per image at saturation, in ms (user + system over all threads of each process; "
        f"{cores} cores give at most {cores * 1000} ms of CPU per second):",
        "",
        "| config | path | " + " | ".join(roles) + " | total |",
        "|---|---|" + "---|" * (len(roles) + 1),
    ]
    for entry in runs:
        for path in ("in_process", "direct", "gateway"):
            cpu = entry.get(path, {}).get("saturation", {}).get("cpu_ms_per_image")
            if not cpu:
                continue
            cells = [f"{cpu[role]:.2f}" if role in cpu else "-" for role in roles]
            total = sum(cpu.values())
            lines.append(f"| {entry['config']['name']} | {path} | " + " | ".join(cells) + f" | {total:.2f} |")
        bare = entry.get("in_process", {}).get("bare_inference")
        if bare:
            lines.append(
                f"| {entry['config']['name']} | bare inference (batch {bare['batch']}, {bare['threads']} thread(s)) | "
                + " | ".join(["-"] * len(roles))
                + f" | {bare['cpu_ms_per_image']['inference']:.2f} |"
            )
    return lines
