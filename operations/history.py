"""Each model's deploy history and canary, kept in the state store the gateway reads (``gateway.state``).

The local stack's store is ``<run_dir>/state.db`` (``STACK_STATE_STORE`` or ``--state-store``
may name another file or a ``redis://`` URL); the gateway is started on the same one. Before
the store, each model kept ``<run_dir>/models/<model>/deploy_history.jsonl`` and
``canary.json``; the first time the store is opened those files are copied into it and renamed
``*.migrated``, so nothing recorded is lost and nothing is imported twice.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.canary import Canaries, Canary
from gateway.state import StateError, StateStore, canary_key, history_entry, history_log, open_store
from operations.archives import DeployError, archive_for
from operations.packaging import sha256sum
from operations.stack import Stack

SWITCHES = ("deploy", "promote", "rollback")  # history actions that change the default version
LEGACY_HISTORY, LEGACY_CANARY = "deploy_history.jsonl", "canary.json"  # the files before the store


@contextmanager
def state(stack: Stack) -> Iterator[StateStore]:
    """The stack's state store, with any files from before it migrated in."""
    try:
        store = open_store(stack.state_location)
    except StateError as exc:
        raise DeployError(str(exc)) from exc
    try:
        migrate(stack, store)
        yield store
    except StateError as exc:
        raise DeployError(str(exc)) from exc
    finally:
        store.close()


def migrate(stack: Stack, store: StateStore) -> list[str]:
    """Copy each model's history and canary files into ``store`` once; returns what it moved."""
    moved = []
    for path in sorted(stack.state_dir.glob(f"*/{LEGACY_HISTORY}")):
        model = path.parent.name
        if not store.entries(history_log(model)):
            try:
                entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except ValueError as exc:
                raise DeployError(f"{path} is not JSON lines ({exc}); fix or move it, then run again") from exc
            for entry in entries:
                store.append(history_log(model), entry)
        path.rename(path.with_name(path.name + ".migrated"))
        moved.append(str(path))
    for path in sorted(stack.state_dir.glob(f"*/{LEGACY_CANARY}")):
        model = path.parent.name
        try:
            canary = Canary.parse(json.loads(path.read_text()))
        except ValueError as exc:
            print(f"warning: {path} is not a canary, not migrated (kept as .migrated): {exc}", file=sys.stderr)
        else:
            if store.get(canary_key(model)) is None:
                store.put(canary_key(model), canary.stored())
        path.rename(path.with_name(path.name + ".migrated"))
        moved.append(str(path))
    return moved


def read_history(stack: Stack) -> list[dict]:
    with state(stack) as store:
        return store.entries(history_log(stack.model_name))


def record(stack: Stack, action: str, version: str, previous: str | None, result: str = "ok", **extra) -> dict:
    archive = archive_for(stack, version)
    sha = sha256sum(archive) if archive.is_file() else None
    entry = history_entry(action, version, previous, getpass.getuser(), result, sha, **extra)
    with state(stack) as store:
        store.append(history_log(stack.model_name), entry)
    return entry


def lineage(history: list[dict]) -> list[str]:
    """The versions that served one after another; a rollback goes back down this chain."""
    chain: list[str] = []
    for entry in history:
        if entry["result"] != "ok" or entry["action"] not in SWITCHES:
            continue
        if entry["action"] == "rollback" and entry["version"] in chain:
            del chain[len(chain) - chain[::-1].index(entry["version"]) :]
            continue
        if not chain and entry["previous"]:
            chain.append(entry["previous"])
        chain.append(entry["version"])
    return chain


def previous_version(history: list[dict], current: str) -> str | None:
    chain = lineage(history)
    if current not in chain:
        return None
    at = len(chain) - 1 - chain[::-1].index(current)
    return chain[at - 1] if at else None


def read_canary(stack: Stack) -> Canary | None:
    with state(stack) as store:
        data = store.get(canary_key(stack.model_name))
    try:
        return Canary.parse(data) if data is not None else None
    except ValueError as exc:
        raise DeployError(f"the stored canary of {stack.model_name!r} is unreadable: {exc}") from exc


def write_canary(stack: Stack, canary: Canary | None) -> None:
    """Start, change or (None) stop the model's canary; the gateway sees it on its next request."""
    with state(stack) as store:
        Canaries(store).set(stack.model_name, canary)


def print_history(stack: Stack, out=print) -> None:
    """One line per entry of the model's deploy history."""
    entries = read_history(stack)
    if not entries:
        out(f"no deployments of {stack.model_name!r} recorded in {stack.state_location}")
    for e in entries:
        extra = {k: v for k, v in e.items() if k not in ("when", "who", "action", "version", "previous", "sha256")}
        if isinstance(extra.get("gate"), dict):
            gate = extra["gate"]
            extra["gate"] = f"{gate['metric']}:{gate['value']}>={gate['threshold']}"
        if "reason" in extra:  # one line per entry; the store keeps the whole reason
            lines = extra["reason"].splitlines()
            extra["reason"] = lines[0].rstrip(":") + (f" ({len(lines) - 1} more lines)" if len(lines) > 1 else "")
        sha = (e["sha256"] or "-")[:12]
        detail = " ".join(f"{k}={v}" for k, v in extra.items() if k != "result")
        out(
            f"{e['when']}  {e['who']:<10} {e['action']:<8} {e['version']:<7} prev={e['previous']}  {sha}  "
            f"{e['result']}  {detail}".rstrip()
        )
