"""The house's rooms: which folder holds how much of the code, and which way the imports flow."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = (
    "gateway",
    "serving",
    "drift",
    "operations",
    "quality",
    "retraining",
    "benchmarks",
    "containers",
    "models",
    "scripts",
)
SERVING_MODULES = {p.stem for p in (ROOT / "serving").glob("yolo_*.py")}  # imported flat inside the .mar
SKIP = ("models/datasets", "models/runs")


def sources() -> dict[str, Path]:
    """Every non-test module, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if not str(relative).startswith(SKIP):
                found[".".join(relative.with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The first-party modules ``path`` imports, type-only and function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in SERVING_MODULES:
                name = f"serving.{name}"
            if name in modules:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = sources()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_loop_not_even_for_type_hints():
    edges = graph()
    state: dict[str, str] = {}
    loops = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                loops.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert loops == []


def test_imports_flow_one_way_between_rooms():
    """The handler and the gateway know nothing of the tools around them; training knows no operations code."""
    allowed = {
        "serving": {"serving"},
        "gateway": {"gateway", "drift", "serving"},
        "drift": {"drift", "serving"},
        "quality": {"quality", "serving"},
        "models": {"models", "quality", "serving"},
        "operations": {"operations", "gateway", "drift", "quality", "serving"},
        "retraining": {"retraining", "operations", "gateway", "drift", "quality", "models", "serving"},
        "containers": {
            "containers",
            "operations",
            "gateway",
            "drift",
            "quality",
            "serving",
            "benchmarks",
            "retraining",
        },
        "benchmarks": {"benchmarks", "operations", "gateway", "drift", "models", "quality", "serving", "retraining"},
        "scripts": set(PACKAGES),
    }
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if target.split(".")[0] not in allowed[module.split(".")[0]]
    )
    assert wrong == []


def test_no_folder_holds_more_than_a_quarter_of_the_code():
    lines: dict[str, int] = defaultdict(int)
    for path in sources().values():
        lines[str(path.parent.relative_to(ROOT))] += len(path.read_text().splitlines())
    total = sum(lines.values())
    shares = {folder: round(count / total, 3) for folder, count in sorted(lines.items())}
    assert max(shares.values()) <= 0.25, shares


def test_scripts_holds_only_thin_entry_points():
    """Libraries live in packages; a script only parses its command line and calls one."""
    for path in (ROOT / "scripts").glob("*.py"):
        tree = ast.parse(path.read_text())
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        assert classes == [] and len(path.read_text().splitlines()) <= 130, (path.name, classes)
