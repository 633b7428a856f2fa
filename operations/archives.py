"""A model version's archive in the model store: where it is, whether it is what it claims, what it carries.

Besides the model, an archive may carry its gate set (``gate/``, ``package_mar.sh --gate-data``) and its
lineage (``lineage.json`` and the source weights, ``source/weights.pt``): what the retraining pipeline
starts from. The handler reads neither; TorchServe unpacks them beside the model and leaves them alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from operations.stack import CURRENT_SUFFIX, Stack

GATE_DIR = "gate"  # where an archive carries its gate set (package_mar.sh --gate-data)
LINEAGE_FILE = "lineage.json"  # what it was packaged from (archive_lineage)
SOURCE_WEIGHTS = "source/weights.pt"  # the .pt it was packaged from, when the served model is another file
LINEAGE_KEYS = ("train_data", "weights_sha256", "packaged_from", "parent", "source_weights")


class DeployError(Exception):
    """A refusal or failure to report to the operator as one clear line; nothing serving was changed."""


def archive_for(stack: Stack, version: str) -> Path:
    return stack.model_store / f"{stack.model_name}_v{version}.mar"


def check_archive(stack: Stack, version: str) -> Path:
    """Refuse a missing, non-.mar or mislabelled archive before TorchServe sees it."""
    archive = archive_for(stack, version)
    if not archive.is_file():
        raise DeployError(f"no archive {archive}; build it with scripts/package_mar.sh --version {version}")
    manifest = archive_manifest(archive)
    found = (manifest.get("modelName"), manifest.get("modelVersion"))
    if found != (stack.model_name, version):
        raise DeployError(f"{archive} holds {found[0]} v{found[1]}, not {stack.model_name} v{version}")
    return archive


def _open(mar: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(mar)
    except FileNotFoundError:
        raise DeployError(f"no archive {mar}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DeployError(f"{mar} is not a TorchServe archive ({exc.__class__.__name__}: {exc})") from None


def archive_manifest(mar: Path) -> dict:
    """The ``model`` section of an archive's MAR-INF/MANIFEST.json (modelName, modelVersion, serializedFile)."""
    with _open(mar) as zf:
        try:
            return json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
        except (KeyError, ValueError) as exc:
            raise DeployError(f"{mar} is not a TorchServe archive ({exc.__class__.__name__}: {exc})") from None


def current_archive(store: Path, name: str) -> Path | None:
    """The archive ``<name>_current.mar`` points at in ``store`` (what a cold start loads); None when none."""
    pointer = Path(store) / f"{name}{CURRENT_SUFFIX}"
    return pointer.resolve() if pointer.is_file() else None


def extract_gate_set(mar: Path, dest: Path) -> Path | None:
    """Unpack the gate set an archive carries into ``dest``; return its folder, or None when it carries none."""
    with _open(mar) as zf:
        members = [m for m in zf.namelist() if m.startswith(f"{GATE_DIR}/")]
        if not members:
            return None
        zf.extractall(dest, members)
    return Path(dest) / GATE_DIR


def archive_lineage(mar: Path) -> dict:
    """What an archive records of where it came from (``package_mar.sh``, lineage.json).

    Keys: ``train_data`` (the dataset yaml or folder the weights were trained on, absolute; None when
    not given with --train-data), ``weights_sha256`` and ``packaged_from`` (the source weights and the
    path they were packaged from), ``parent`` (the version ``<name>_current.mar`` pointed at when it was
    packaged) and ``source_weights`` (the archive member holding the source weights). An archive packaged
    before lineage was recorded gives None for each, except ``source_weights`` when its model is a .pt.
    """
    with _open(mar) as zf:
        if LINEAGE_FILE in zf.namelist():
            try:
                recorded = json.loads(zf.read(LINEAGE_FILE))
            except ValueError as exc:
                raise DeployError(f"{mar}: {LINEAGE_FILE} is not JSON ({exc})") from None
            return {**dict.fromkeys(LINEAGE_KEYS), **recorded}
    serialized = archive_manifest(mar).get("serializedFile", "")
    return {**dict.fromkeys(LINEAGE_KEYS), "source_weights": serialized if serialized.endswith(".pt") else None}


def extract_source_weights(mar: Path, dest: Path) -> Path:
    """Write the Ultralytics weights ``mar`` was packaged from to ``dest/<archive name>.pt`` and return the path.

    The bytes are checked against the sha256 the archive recorded. Refuses, naming the archive, one
    that carries no source weights (packaged in another format before lineage was recorded).
    """
    mar = Path(mar)
    lineage = archive_lineage(mar)
    member = lineage["source_weights"]
    with _open(mar) as zf:
        if not member or member not in zf.namelist():
            raise DeployError(
                f"{mar} carries no source weights (packaged before package_mar.sh kept them); "
                "package the version again from its .pt to have them"
            )
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{mar.resolve().stem}.pt"
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        with zf.open(member) as source, partial.open("wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    expected = lineage.get("weights_sha256")
    if expected and digest.hexdigest() != expected:
        partial.unlink()
        raise DeployError(f"{mar}: {member} does not match the sha256 its lineage recorded; the archive is damaged")
    os.replace(partial, target)
    return target
