"""What the files around a model look like, for every room that reads or writes them: image suffixes and
media types, Ultralytics' images/ -> labels/ rule, YAML mappings, and an archive's own files.

Shipped in every .mar beside the handler (every ``serving/yolo_*.py`` is) and read from here by packaging,
the gate, drift, retraining and the gateway, so a suffix, a media type or a path rule is written once.
Standard library only at import time (YAML is imported where a mapping is read).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

# The image formats the stack accepts and stores: Pillow's format name -> media type -> file suffix.
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}
MEDIA_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/bmp": ".bmp",
                  "image/tiff": ".tiff"}  # fmt: skip
# Every suffix an image file of those formats may carry (what a folder of images is read for).
IMAGE_SUFFIXES = frozenset({*MEDIA_SUFFIXES.values(), ".jpeg", ".tif"})

ARCHIVE_CONFIG = "model-config.yaml"  # in every .mar (packaging renders it from serving/model-config.yaml)


def is_image_file(path: Path) -> bool:
    """A file whose suffix (any case) is an image format's."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, at any depth, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(p))


def media_suffix(media_type: str) -> str:
    """The file suffix of a stored image's media type (``.jpg`` for JPEG); ValueError for any other type."""
    try:
        return MEDIA_SUFFIXES[media_type]
    except KeyError:
        raise ValueError(f"media type {media_type!r} is not one of {', '.join(MEDIA_SUFFIXES)}") from None


def label_path(image: Path) -> Path:
    """Where Ultralytics looks for an image's YOLO labels: its path with the last /images/ made /labels/, as .txt
    (an image outside any images/ folder keeps its folder)."""
    head, sep, tail = str(image).rpartition(f"{os.sep}images{os.sep}")
    return Path(f"{head}{os.sep}labels{os.sep}{tail}" if sep else str(image)).with_suffix(".txt")


class MappingError(ValueError):
    """A YAML file that cannot be read, or holds something else than a key: value mapping; names the file."""


def read_mapping(path: Path) -> dict:
    """The key: value mapping a YAML file holds ({} when it is empty); MappingError naming the file otherwise."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MappingError(f"{path} is not readable YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MappingError(f"{path} holds a {type(data).__name__}, not the key: value mapping it should")
    return data


def archive_config(mar: Path) -> dict:
    """The model config an archive carries (``model-config.yaml``: workers, batching, the ``handler:`` section)."""
    import yaml

    with zipfile.ZipFile(mar) as zf:
        return yaml.safe_load(zf.read(ARCHIVE_CONFIG)) or {}
