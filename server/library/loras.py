"""The LoRA library: the files under models/loras/, their metadata, ids, usage and fit.

A LoRA's identity is the SHA-256 of its file, so renaming or moving it keeps its id and
statistics, identical copies are one LoRA, and a deleted file comes back under its old
id. Hashes are cached by (path, size, mtime) so a rescan reads only new files.

Whether a file fits the loaded model is decided by a `check` the worker passes in once
the model is loaded (server/ never imports torch); verdicts are stored per model, so a
restart checks only new files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from server.contract import ApiError, ErrorCode, LoraRef, error_object
from server.library.layout import BAD_NAME_REASON, has_bad_name, text_path
from server.library.lora_meta import LORA_SUFFIX, describe, describe_unreadable, preview_for
from server.store import Store

log = logging.getLogger("darkroom.catalog")

# path -> None if the LoRA file fits the loaded model, else a short reason. A check with a
# `model_key` attribute gets its verdicts cached under that key.
Check = Callable[[Path], str | None]


@dataclass(frozen=True)
class ResolvedLora:
    id: int
    sha256: str
    path: Path
    weight: float


@dataclass(frozen=True)
class ScanSummary:
    files: int
    loras: int
    compatible: int
    added: list[int]
    removed: list[int]
    incompatible: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class LoraQuery(BaseModel):
    """Filters of GET /loras/available (query strings, so parsed leniently)."""

    model_config = ConfigDict(extra="ignore")

    tag: str | None = None
    type: str | None = None
    q: str | None = None
    include_incompatible: bool = False


class LoraCatalog:
    def __init__(self, store: Store, loras_dir: Path) -> None:
        """`loras_dir`: server.library.layout.lora_dir of the models folder."""
        self.store = store
        self.loras_dir = loras_dir
        self._lock = threading.Lock()
        self._check: Check | None = None
        self._verdicts: dict[str, str | None] = {}
        self._hashes: dict[str, tuple[int, float, str]] = {}
        self._warned: dict[int, str] = {}

    def refresh(self, check: Check | None = None) -> ScanSummary:
        """Rescan the folder. A new `check` replaces the one in use; without one, the last
        one given judges new files (none before the model is loaded)."""
        with self._lock:
            if check is not None:
                self._check = check
            before = {row["id"] for row in self.store.loras(available_only=True)}
            described = [entry for path in self._files() if (entry := self._describe(path))]
            entries = self._unique(described)
            self.store.sync_loras(entries)
            self._verdicts = self._judge(entries)
            rows = self.store.loras(available_only=True)
            bad = [
                {"id": row["id"], "file": row["path"], "reason": reason}
                for row in rows
                if (reason := self._reason(row, json.loads(row["meta_json"])))
            ]
            after = {row["id"] for row in rows}
        summary = ScanSummary(
            files=len(described),
            loras=len(rows),
            compatible=len(rows) - len(bad),
            added=sorted(after - before),
            removed=sorted(before - after),
            incompatible=bad,
        )
        log.info(
            "LoRA catalog: %d file(s), %d LoRA(s), %d incompatible, in %s",
            summary.files,
            summary.loras,
            len(bad),
            self.loras_dir,
        )
        for entry in bad:
            lora_id, file, reason = entry["id"], entry["file"], entry["reason"]
            if self._warned.get(lora_id) != reason:
                log.warning("LoRA %s (id %d) is not usable: %s", file, lora_id, reason)
        self._warned = {entry["id"]: entry["reason"] for entry in bad}
        return summary

    def _files(self) -> list[Path]:
        if not self.loras_dir.is_dir():
            return []
        return sorted(
            p
            for p in self.loras_dir.rglob("*")
            if p.is_file() and p.name.lower().endswith(LORA_SUFFIX)
        )

    def _describe(self, path: Path) -> dict[str, Any] | None:
        relative = text_path(path.relative_to(self.loras_dir).as_posix())
        try:
            stat = path.stat()
            sha256 = self._known_hash(relative, stat.st_size, stat.st_mtime) or file_sha256(path)
        except OSError as exc:
            log.warning("skipping LoRA %s: %s", relative, exc)
            return None
        self._hashes[relative] = (stat.st_size, stat.st_mtime, sha256)
        return {
            "sha256": sha256,
            "path": relative,
            "file_size": stat.st_size,
            "file_mtime": stat.st_mtime,
            "meta": self._meta(path, relative),
        }

    def _meta(self, path: Path, relative: str) -> dict[str, Any]:
        try:
            meta = describe(path)
        except Exception as exc:  # one bad file must not hide the rest of the library
            log.exception("could not describe LoRA %s", relative)
            meta = describe_unreadable(path, f"could not be read: {type(exc).__name__}: {exc}")
        if has_bad_name(path):
            meta = {**meta, "name": text_path(meta["name"]), "problem": BAD_NAME_REASON}
        return meta

    def _known_hash(self, relative: str, size: int, mtime: float) -> str | None:
        known = self._hashes.get(relative)
        if known and known[:2] == (size, mtime):
            return known[2]
        row = self.store.lora_by_path(relative)
        if row and (row["file_size"], row["file_mtime"]) == (size, mtime):
            return row["sha256"]
        return None

    def _unique(self, described: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One entry per content hash. Of identical files the one already cataloged stays
        (adding a copy changes nothing), else the one with a sidecar, a preview, the first
        by path."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for entry in described:
            groups.setdefault(entry["sha256"], []).append(entry)
        stored = {row["sha256"]: row["path"] for row in self.store.loras(available_only=False)}
        unique = []
        for sha256, group in groups.items():
            group.sort(
                key=lambda entry: (
                    entry["path"] != stored.get(sha256),
                    not entry["meta"]["has_sidecar"],
                    not entry["meta"]["has_preview"],
                    entry["path"],
                )
            )
            chosen, copies = group[0], [entry["path"] for entry in group[1:]]
            if copies:
                log.info("LoRA %s has identical copies: %s", chosen["path"], ", ".join(copies))
            meta = {**chosen["meta"], "duplicates": copies}
            row = {key: value for key, value in chosen.items() if key != "meta"}
            unique.append({**row, "meta_json": json.dumps(meta)})
        return unique

    def _judge(
        self, entries: list[dict[str, Any]], check: Check | None = None
    ) -> dict[str, str | None]:
        check = check or self._check
        if check is None:
            return {}
        model_key = getattr(check, "model_key", None)
        cached = self.store.lora_verdicts(model_key) if model_key else {}
        verdicts: dict[str, str | None] = {}
        fresh: dict[str, str | None] = {}
        for entry in entries:
            sha256 = entry["sha256"]
            if json.loads(entry["meta_json"])["problem"]:
                continue
            if sha256 in cached:
                verdicts[sha256] = cached[sha256]
                continue
            try:
                verdicts[sha256] = fresh[sha256] = check(self.loras_dir / entry["path"])
            except Exception as exc:  # a bug in a check must not hide the other LoRAs
                log.exception("could not check LoRA %s", entry["path"])
                verdicts[sha256] = f"could not be checked: {type(exc).__name__}: {exc}"
        if fresh and model_key:
            self.store.save_lora_verdicts(model_key, fresh)
        return verdicts

    def _reason(self, row: dict[str, Any], meta: dict[str, Any]) -> str | None:
        return meta.get("problem") or self._verdicts.get(row["sha256"])

    def available(self, query: LoraQuery | None = None) -> list[dict[str, Any]]:
        """Listed LoRAs with their meta and fit, filtered; only those that fit unless
        the query includes the incompatible ones."""
        query = query or LoraQuery()
        listed = []
        for row in self.store.loras(available_only=True):
            meta = json.loads(row["meta_json"])
            reason = self._reason(row, meta)
            entry = {**row, "meta": meta, "compatible": reason is None, "reason": reason}
            if (reason is None or query.include_incompatible) and _matches(meta, query):
                listed.append(entry)
        return listed

    def resolve(self, refs: list[LoraRef], check: Check | None = None) -> list[ResolvedLora]:
        """Map requested ids to files, or raise INVALID_LORA naming the unknown ones and
        why the unusable ones cannot be used. `check` judges fit against another model
        than the default one (the model the request will run on)."""
        rows = {row["id"]: row for row in self.available(LoraQuery(include_incompatible=True))}
        if check is not None and refs:
            wanted = {ref.id: rows[ref.id] for ref in refs if ref.id in rows}
            rows = {**rows, **self._refit(wanted, check)}
        missing = [ref.id for ref in refs if ref.id not in rows]
        unusable = [
            {"id": ref.id, "reason": rows[ref.id]["reason"]}
            for ref in refs
            if ref.id in rows and not rows[ref.id]["compatible"]
        ]
        if missing or unusable:
            if check is not None:  # valid_ids: what fits the requested model, not the default
                rows = {**rows, **self._refit(rows, check)}
            valid = sorted(lora_id for lora_id, row in rows.items() if row["compatible"])
            raise ApiError(ErrorCode.INVALID_LORA, *_invalid(missing, unusable, valid))
        return [
            ResolvedLora(
                ref.id, rows[ref.id]["sha256"], self.loras_dir / rows[ref.id]["path"], ref.weight
            )
            for ref in refs
        ]

    def _refit(self, rows: dict[int, dict[str, Any]], check: Check) -> dict[int, dict[str, Any]]:
        """The rows with their fit judged by `check` (verdicts cached per model)."""
        with self._lock:
            verdicts = self._judge(list(rows.values()), check)
        refit = {}
        for lora_id, row in rows.items():
            reason = row["meta"]["problem"] or verdicts.get(row["sha256"])
            refit[lora_id] = {**row, "compatible": reason is None, "reason": reason}
        return refit

    def load_failed(self, sha256: str, reason: str) -> dict[str, Any]:
        """The error a job gets when its LoRA would not load after all. The LoRA is then
        listed as incompatible until the next refresh, so later requests fail at once."""
        self._verdicts[sha256] = reason
        rows = self.available(LoraQuery(include_incompatible=True))
        lora_id = next((row["id"] for row in rows if row["sha256"] == sha256), None)
        valid = sorted(row["id"] for row in rows if row["compatible"])
        message, details = _invalid([], [{"id": lora_id, "reason": reason}], valid)
        return error_object(ErrorCode.INVALID_LORA, message, details)

    def preview_path(self, lora_id: int) -> Path | None:
        row = self.store.lora_by_id(lora_id)
        if row is None:
            return None
        return preview_for(self.loras_dir / row["path"])


def _invalid(
    missing: list[int], unusable: list[dict[str, Any]], valid: list[int]
) -> tuple[str, dict[str, Any]]:
    parts = []
    if missing:
        plural = "s" if len(missing) > 1 else ""
        parts.append(f"LoRA model{plural} with ID{plural} {', '.join(map(str, missing))} not found")
    for entry in unusable:
        parts.append(f"LoRA model with ID {entry['id']} cannot be used: {entry['reason']}")
    details: dict[str, Any] = {
        "invalid_ids": [*missing, *(entry["id"] for entry in unusable)],
        "valid_ids": valid,
    }
    if unusable:
        details["incompatible"] = unusable
    return "; ".join(parts), details


def _matches(meta: dict[str, Any], query: LoraQuery) -> bool:
    if query.tag and query.tag.strip().lower() not in {t.lower() for t in meta["tags"]}:
        return False
    if query.type and query.type.strip().lower() != meta["type"].lower():
        return False
    if query.q:
        needle = query.q.strip().lower()
        return needle in meta["name"].lower() or needle in meta["description"].lower()
    return True


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read a megabyte at a time (checkpoints and LoRAs alike)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_size_mb(size: int) -> float:
    return round(size / (1024 * 1024), 3)
