"""A LoRA file's catalog fields: its sidecar NAME.json, else its training metadata, else
its file name.

The sidecar is AUTOMATIC1111's extra-networks user metadata (`description`, `activation
text`, `preferred weight`, `notes`, `sd version`) plus our own `name`, `type`,
`personality`, `tags`, `url` and `thumbnail_url`. The training metadata is what kohya's
scripts write into the safetensors header (`ss_*`, `modelspec.*`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipelines.lora_files import (
    LoraFileError,
    finite_number,
    read_header,
    refuse_json_constant,
    training_info,
    unsupported_reason,
)

log = logging.getLogger("darkroom.catalog")

LORA_SUFFIX = ".safetensors"
PREVIEW_SUFFIXES = (
    ".preview.png",
    ".preview.jpg",
    ".preview.jpeg",
    ".preview.webp",
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
)
_TEXT_FIELDS = {
    "name": "name",
    "type": "type",
    "personality": "personality",
    "description": "description",
    "url": "url",
    "thumbnail_url": "thumbnail_url",
    "activation text": "activation_text",
    "activation_text": "activation_text",
    "notes": "notes",
}
_SD_VERSIONS = {"SD1": "SD1", "SD2": "SD2", "SDXL": "SDXL"}


def stem(path: Path) -> str:
    return path.name[: -len(LORA_SUFFIX)]


def preview_for(path: Path) -> Path | None:
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(stem(path) + suffix)
        if candidate.is_file():
            return candidate
    return None


def describe(path: Path) -> dict[str, Any]:
    """Everything the catalog shows about one file. `problem` is set when no model could
    load the file (unreadable, truncated, not a LoRA); `warnings` lists what was ignored."""
    meta = describe_unreadable(path, None)
    try:
        header = read_header(path)
    except (LoraFileError, OSError) as exc:
        meta["problem"] = str(exc) if isinstance(exc, LoraFileError) else f"unreadable: {exc}"
    else:
        meta.update(training_info(header))
        meta["problem"] = unsupported_reason(header)
        if str(meta["format"]).startswith("lycoris"):
            meta["type"] = "lycoris"
    sidecar = path.with_name(stem(path) + ".json")
    meta["has_sidecar"] = sidecar.is_file()
    _apply_sidecar(sidecar, meta)
    return {key: _utf8(value) for key, value in meta.items()}


def describe_unreadable(path: Path, problem: str | None) -> dict[str, Any]:
    """The catalog fields of a file known by its name alone."""
    return {
        "name": stem(path),
        "type": "lora",
        "personality": "",
        "description": "",
        "url": "",
        "tags": [],
        "thumbnail_url": None,
        "has_preview": preview_for(path) is not None,
        "activation_text": "",
        "preferred_weight": None,
        "notes": "",
        "base_model": None,
        "rank": None,
        "alpha": None,
        "format": None,
        "problem": problem,
        "warnings": [],
        "has_sidecar": False,
    }


def _apply_sidecar(sidecar: Path, meta: dict[str, Any]) -> None:
    if not sidecar.is_file():
        return
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"), parse_constant=refuse_json_constant)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except RecursionError:
        log.warning("ignoring sidecar %s: nested too deep", sidecar)
        meta["warnings"].append(f"{sidecar.name} ignored: JSON nested too deep")
        return
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring sidecar %s: %s", sidecar, exc)
        meta["warnings"].append(f"{sidecar.name} ignored: {_first_line(exc)}")
        return
    for key, value in data.items():
        field = _TEXT_FIELDS.get(key)
        if field and isinstance(value, str):
            if value.strip():
                meta[field] = value.strip()
        elif key == "tags":
            tags = _tags(value)
            if tags is None:
                meta["warnings"].append(f"{sidecar.name}: tags must be a list or a string")
            elif tags:
                meta["tags"] = tags
        elif key in ("preferred weight", "preferred_weight"):
            weight = finite_number(value)
            if weight is None:
                meta["warnings"].append(f"{sidecar.name}: preferred weight is not a finite number")
            elif weight > 0:  # AUTOMATIC1111 writes 0 for "not set"
                meta["preferred_weight"] = weight
        elif key in ("sd version", "sd_version") and isinstance(value, str):
            if value in _SD_VERSIONS:
                meta["base_model"] = _SD_VERSIONS[value]
        elif field:
            meta["warnings"].append(f"{sidecar.name}: {key} must be a string")


def _tags(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [tag.strip() for tag in value.split(",") if tag.strip()]
    if isinstance(value, list):
        return [str(tag).strip() for tag in value if str(tag).strip()]
    return None


def _utf8(value: Any) -> Any:
    """Text as UTF-8 can carry it: a JSON escape like \\udcff in a file decodes to a lone
    surrogate, which no answer could encode."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_utf8(item) for item in value]
    return value


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
