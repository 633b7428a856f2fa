"""A model version's archive in the model store: where it is, whether it is what it claims, its gate set."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from operations.packaging import GATE_DIR
from operations.stack import Stack


class DeployError(Exception):
    """A refusal or failure to report to the operator as one clear line; nothing serving was changed."""


def archive_for(stack: Stack, version: str) -> Path:
    return stack.model_store / f"{stack.model_name}_v{version}.mar"


def check_archive(stack: Stack, version: str) -> Path:
    """Refuse a missing, non-.mar or mislabelled archive before TorchServe sees it."""
    archive = archive_for(stack, version)
    if not archive.is_file():
        raise DeployError(f"no archive {archive}; build it with scripts/package_mar.sh --version {version}")
    try:
        with zipfile.ZipFile(archive) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DeployError(f"{archive} is not a TorchServe archive ({exc.__class__.__name__}: {exc})") from exc
    found = (manifest.get("modelName"), manifest.get("modelVersion"))
    if found != (stack.model_name, version):
        raise DeployError(f"{archive} holds {found[0]} v{found[1]}, not {stack.model_name} v{version}")
    return archive


def archive_gate(archive: Path, dest: Path) -> Path | None:
    """Unpack the gate set an archive carries into ``dest``; None when it carries none."""
    with zipfile.ZipFile(archive) as mar:
        members = [m for m in mar.namelist() if m.startswith(f"{GATE_DIR}/")]
        if not members:
            return None
        mar.extractall(dest, members)
    return dest / GATE_DIR
