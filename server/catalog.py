"""The LoRA catalog: files under models/loras/ with their metadata, ids and usage.

A LoRA's identity is the SHA-256 of its file, so renaming or moving it keeps its id and
statistics. Hashes are cached by (path, size, mtime) so a rescan reads only new files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.contract import ApiError, ErrorCode, LoraRef
from server.store import Store

log = logging.getLogger("darkroom.catalog")

LORA_SUFFIXES = (".safetensors",)
PREVIEW_SUFFIXES = (".preview.png", ".png", ".jpg", ".jpeg", ".webp")
SIDECAR_TEXT_FIELDS = ("name", "type", "personality", "description", "url")


@dataclass(frozen=True)
class ResolvedLora:
    id: int
    sha256: str
    path: Path
    weight: float


class LoraCatalog:
    def __init__(self, store: Store, loras_dir: Path) -> None:
        self.store = store
        self.loras_dir = loras_dir

    def refresh(self) -> int:
        found = [entry for path in self._files() if (entry := self._describe(path))]
        self.store.sync_loras(found)
        log.info("LoRA catalog: %d file(s) in %s", len(found), self.loras_dir)
        return len(found)

    def _files(self) -> list[Path]:
        if not self.loras_dir.is_dir():
            return []
        return sorted(
            p
            for p in self.loras_dir.rglob("*")
            if p.is_file() and p.name.lower().endswith(LORA_SUFFIXES)
        )

    def _describe(self, path: Path) -> dict[str, Any] | None:
        relative = path.relative_to(self.loras_dir).as_posix()
        try:
            stat = path.stat()
            cached = self.store.lora_by_path(relative)
            if (
                cached
                and cached["file_size"] == stat.st_size
                and cached["file_mtime"] == stat.st_mtime
            ):
                sha256 = cached["sha256"]
            else:
                sha256 = _sha256(path)
        except OSError as exc:
            log.warning("skipping LoRA %s: %s", relative, exc)
            return None
        return {
            "sha256": sha256,
            "path": relative,
            "file_size": stat.st_size,
            "file_mtime": stat.st_mtime,
            "meta_json": json.dumps(_metadata(path)),
        }

    def available(self) -> list[dict[str, Any]]:
        return [_with_meta(row) for row in self.store.loras(available_only=True)]

    def resolve(self, refs: list[LoraRef]) -> list[ResolvedLora]:
        """Map requested ids to files, or raise INVALID_LORA naming the unknown ones."""
        rows = {row["id"]: row for row in self.store.loras(available_only=True)}
        missing = [ref.id for ref in refs if ref.id not in rows]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise ApiError(
                ErrorCode.INVALID_LORA,
                f"LoRA model{plural} with ID{plural} {', '.join(map(str, missing))} not found",
                {"invalid_ids": missing, "valid_ids": sorted(rows)},
            )
        return [
            ResolvedLora(
                ref.id, rows[ref.id]["sha256"], self.loras_dir / rows[ref.id]["path"], ref.weight
            )
            for ref in refs
        ]

    def preview_path(self, lora_id: int) -> Path | None:
        row = next((r for r in self.store.loras() if r["id"] == lora_id), None)
        if row is None:
            return None
        return _preview_for(self.loras_dir / row["path"])


def _with_meta(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "meta": json.loads(row["meta_json"])}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stem(path: Path) -> str:
    return path.name[: -len(".safetensors")]


def _preview_for(path: Path) -> Path | None:
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(_stem(path) + suffix)
        if candidate.is_file():
            return candidate
    return None


def _metadata(path: Path) -> dict[str, Any]:
    """Contract fields from the sidecar NAME.json, falling back to the file name."""
    meta: dict[str, Any] = {
        "name": _stem(path),
        "type": "lora",
        "personality": "",
        "description": "",
        "url": "",
        "tags": [],
        "thumbnail_url": None,
        "has_preview": _preview_for(path) is not None,
    }
    sidecar = path.with_name(_stem(path) + ".json")
    if not sidecar.is_file():
        return meta
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        log.warning("ignoring sidecar %s: %s", sidecar, exc)
        return meta
    for key in SIDECAR_TEXT_FIELDS:
        if isinstance(data.get(key), str) and data[key]:
            meta[key] = data[key]
    if isinstance(data.get("tags"), list):
        meta["tags"] = [str(tag) for tag in data["tags"]]
    elif isinstance(data.get("tags"), str):
        meta["tags"] = [t.strip() for t in data["tags"].split(",") if t.strip()]
    if isinstance(data.get("thumbnail_url"), str) and data["thumbnail_url"]:
        meta["thumbnail_url"] = data["thumbnail_url"]
    return meta


def file_size_mb(size: int) -> float:
    return round(size / (1024 * 1024), 3)
