"""The model library: the checkpoints under the models folder, their identity and fit.

A checkpoint is a diffusers folder (it has model_index.json) or a single file; pickle
files (.ckpt, .pt, .pth, .bin) are listed but never loaded, since unpickling can run
arbitrary code. Identity is by content, as AUTOMATIC1111 has it: the SHA-256 of the file
(of a folder: of its weight files' hashes, in path order), the short hash its first 10
hex digits, the title `name [hash]`. Hashing is cached by (path, size, mtime) in the
database, so a 7 GB file is read once, at a scan, never while answering a request. Only
headers and configs are read to classify a checkpoint (pipelines.checkpoint_files). An
SDXL inpainting checkpoint is listed as compatible, with `inpainting`, and renders only
jobs with a mask (`ModelCatalog.check_use`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.checkpoint_files import (
    PICKLE_SUFFIXES,
    SDXL_INPAINTING,
    CheckpointInfo,
    classify_checkpoint,
)
from pipelines.spec import ModelSpec
from server.contract import ApiError, ErrorCode
from server.library.layout import BAD_NAME_REASON, checkpoint_dirs, has_bad_name, text_path
from server.library.loras import file_sha256
from server.store import Store

log = logging.getLogger("darkroom.catalog")

SINGLE_FILE_SUFFIXES = (".safetensors",)
CHECKPOINT_SUFFIXES = (*SINGLE_FILE_SUFFIXES, *PICKLE_SUFFIXES)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx")


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint as the API shows it; `sha256` is None for a hub id (not on disk)."""

    id: int
    name: str
    path: str
    sha256: str | None
    format: str
    base_model: str
    file_size: int
    compatible: bool
    reason: str | None
    default: bool = False
    # Other files with the same content: one model, listed once, under this entry.
    duplicates: tuple[str, ...] = ()

    @property
    def hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    @property
    def inpainting(self) -> bool:
        """An SDXL inpainting checkpoint (9-channel UNet): inpainting jobs only."""
        return self.compatible and self.base_model == SDXL_INPAINTING

    def refusal(self, masked: bool, hires: bool = False) -> str | None:
        """Why this model cannot render a job (None: it can); `masked`: an inpainting job,
        `hires`: with a hires fix (a second pass has no mask for an inpainting UNet)."""
        if self.inpainting and (not masked or hires):
            return (
                f"model {self.name!r} is an SDXL inpainting model: it renders only"
                " inpainting (an image-to-image with a mask, without a hires fix)"
            )
        return None

    def spec(self) -> ModelSpec | None:
        """What a GenerationSpec names: None for the server's default model."""
        if self.default:
            return None
        assert self.sha256 is not None
        return ModelSpec(self.sha256, self.path)


@dataclass(frozen=True)
class ModelScan:
    models: int
    compatible: int
    added: list[int]
    removed: list[int]
    incompatible: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class ModelCatalog:
    def __init__(self, store: Store, models_dir: Path, default_model: str) -> None:
        """`default_model`: what `--model` names (`tiny`, a path, a name under the
        checkpoint folders, or a hub id)."""
        self.store = store
        self.models_dir = models_dir
        self.default_model = default_model
        self._lock = threading.Lock()
        self._entries: list[ModelEntry] = []
        self._checks: dict[str, Any] = {}
        self._copies: dict[str, tuple[str, ...]] = {}

    def refresh(self) -> ModelScan:
        """Rescan the checkpoint folders (and the default model, wherever it lives)."""
        with self._lock:
            before = {row["id"] for row in self.store.models()}
            found = [entry for path in self._candidates() if (entry := self._describe(path))]
            unique = {entry["sha256"]: entry for entry in self._unique(found)}
            self._copies = self._duplicates(found, unique)
            self.store.sync_models(list(unique.values()))
            rows = self.store.models()
            self._entries = self._with_default([self._entry(row) for row in rows])
        after = {row["id"] for row in rows}
        bad = [
            {"id": e.id, "file": e.path, "reason": e.reason}
            for e in self._entries
            if not e.compatible
        ]
        log.info(
            "model library: %d checkpoint(s), %d incompatible, default %s",
            len(rows),
            len(bad),
            self.default().title,
        )
        return ModelScan(
            models=len(self._entries),
            compatible=len(self._entries) - len(bad),
            added=sorted(after - before),
            removed=sorted(before - after),
            incompatible=bad,
        )

    def entries(self, include_incompatible: bool = False) -> list[ModelEntry]:
        return [e for e in self._entries if e.compatible or include_incompatible]

    def default(self) -> ModelEntry:
        return next(e for e in self._entries if e.default)

    def resolve(self, name: str | None) -> ModelEntry:
        """The model a request names by name, title, short or full hash (None: the
        default), or a VALIDATION_ERROR naming settings.model and what is available."""
        if name is None:
            return self.default()
        wanted = name.strip()
        for entry in self._entries:
            if wanted in (entry.name, entry.title, entry.hash, entry.sha256, entry.path):
                if entry.compatible:
                    return entry
                raise _invalid(f"model {name!r} cannot be used: {entry.reason}", self)
        raise _invalid(f"unknown model {name!r}", self)

    def check_use(self, entry: ModelEntry, masked: bool, hires: bool = False) -> None:
        """A VALIDATION_ERROR naming settings.model when `entry` cannot render this job (an
        inpainting model, a job without a mask or with a hires fix), listing the models
        that can."""
        reason = entry.refusal(masked, hires)
        if reason is not None:
            raise _invalid(reason, self, masked, hires)

    def lora_check(self, entry: ModelEntry) -> Any:
        """LoRA fit against this model (pipelines.lora_fit.LoraFit, from the checkpoint's
        header and configs, no weights loaded), kept per model."""
        assert entry.sha256 is not None
        check = self._checks.get(entry.sha256)
        if check is None:
            from pipelines.model_files import checkpoint_lora_fit

            try:
                check = checkpoint_lora_fit(Path(entry.path))
            except Exception as exc:  # a broken file: its job fails at load, with the reason
                reason = f"could not be checked against {entry.title}: {exc}"[:300]

                def check(path: Path) -> str | None:
                    return reason

            self._checks[entry.sha256] = check
        return check

    def _candidates(self) -> list[Path]:
        paths: list[Path] = []
        for folder in checkpoint_dirs(self.models_dir):
            for path in sorted(folder.rglob("*")):
                if any(part.startswith(".") for part in path.relative_to(folder).parts):
                    continue  # staging folders and hidden files
                if path.is_dir() and (path / "model_index.json").is_file() or (
                    path.is_file()
                    and path.suffix.lower() in CHECKPOINT_SUFFIXES
                    and not _inside_diffusers_folder(path, folder)
                ):
                    paths.append(path)
        default = self._default_path()
        if default is not None and default.exists() and _key(default) not in map(_key, paths):
            paths.append(default)
        return paths

    def _unique(self, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One entry per content hash. Of identical files the default model stays (a copy
        of it must not hide its hash), else the one already cataloged, else the first by
        path."""
        default = self._default_path()
        default_key = _key(default) if default is not None else None
        stored = {row["sha256"]: row["path"] for row in self.store.models(available_only=False)}
        unique: dict[str, dict[str, Any]] = {}
        for entry in sorted(
            found,
            key=lambda e: (
                e["path"] != default_key,
                e["path"] != stored.get(e["sha256"]),
                e["path"],
            ),
        ):
            unique.setdefault(entry["sha256"], entry)
        return list(unique.values())

    def _duplicates(
        self, found: list[dict[str, Any]], unique: dict[str, dict[str, Any]]
    ) -> dict[str, tuple[str, ...]]:
        """sha256 -> the other files of that content (relative to the models folder), so
        /models says why a copy of a checkpoint is not listed on its own."""
        root = self.models_dir.resolve()
        copies: dict[str, list[str]] = {}
        for entry in found:
            if entry["path"] != unique[entry["sha256"]]["path"]:
                path = Path(entry["path"])
                shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path
                copies.setdefault(entry["sha256"], []).append(str(shown))
        for sha256, paths in copies.items():
            chosen = unique[sha256]["name"]
            log.info("checkpoint %s has identical copies: %s", chosen, ", ".join(paths))
        return {sha256: tuple(paths) for sha256, paths in copies.items()}

    def _default_path(self) -> Path | None:
        if self.default_model == "tiny":
            from pipelines.tiny import tiny_model_dir

            return tiny_model_dir(self.models_dir)
        given = Path(self.default_model).expanduser()
        folders = checkpoint_dirs(self.models_dir)
        for candidate in (given, *(folder / self.default_model for folder in folders)):
            if candidate.exists():
                return candidate
        return None

    def _describe(self, path: Path) -> dict[str, Any] | None:
        key = _key(path)
        try:
            size, mtime = _size_and_mtime(path)
            row = self.store.model_by_path(key)
            known = row and (row["file_size"], row["file_mtime"]) == (size, mtime)
            sha256 = row["sha256"] if known else _content_hash(path)
        except OSError as exc:
            log.warning("skipping checkpoint %s: %s", key, exc)
            return None
        try:
            info = classify_checkpoint(path)
            reason = BAD_NAME_REASON if has_bad_name(path) else info.reason
        except Exception as exc:  # one bad file must not hide the rest of the library
            log.exception("could not classify checkpoint %s", key)
            info = CheckpointInfo("single-file", "unknown", False)
            reason = f"could not be read: {type(exc).__name__}: {exc}"[:300]
        return {
            "sha256": sha256,
            "path": key,
            "name": text_path(path.name if path.is_dir() else path.stem),
            "file_size": size,
            "file_mtime": mtime,
            "format": info.format,
            "base_model": info.base_model,
            "reason": reason,
        }

    def _entry(self, row: dict[str, Any]) -> ModelEntry:
        default = self._default_path()
        is_default = default is not None and _key(default) == row["path"]
        return ModelEntry(
            id=row["id"],
            name=row["name"],
            path=row["path"],
            sha256=row["sha256"],
            format=row["format"],
            base_model=row["base_model"],
            file_size=row["file_size"],
            compatible=row["reason"] is None,
            reason=row["reason"],
            default=is_default,
            duplicates=self._copies.get(row["sha256"], ()),
        )

    def _with_default(self, entries: list[ModelEntry]) -> list[ModelEntry]:
        """The default model is always listed: a hub id (or a tiny model not yet built)
        has no file to hash, so it is listed by name alone, with id 0."""
        if any(e.default for e in entries):
            return entries
        hub = ModelEntry(
            id=0,
            name=self.default_model,
            path=self.default_model,
            sha256=None,
            format="diffusers",
            base_model="SDXL",
            file_size=0,
            compatible=True,
            reason=None,
            default=True,
        )
        return [hub, *entries]


def _invalid(
    message: str, catalog: ModelCatalog, masked: bool = True, hires: bool = False
) -> ApiError:
    names = [entry.name for entry in catalog.entries() if entry.refusal(masked, hires) is None]
    return ApiError(
        ErrorCode.VALIDATION_ERROR,
        f"Invalid request: settings.model: {message}; available: {', '.join(names)}",
        {"fields": {"settings.model": message}, "available": names},
    )


def _key(path: Path) -> str:
    """A checkpoint's path as the library lists it: absolute, through symlinks, not to
    their targets (a linked file is listed where the user put the link)."""
    return text_path(os.path.abspath(path))


def _inside_diffusers_folder(path: Path, top: Path) -> bool:
    """A diffusers folder's own weight files are part of it, not checkpoints of their own."""
    for parent in path.parents:
        if parent == top:
            return False
        if (parent / "model_index.json").is_file():
            return True
    return False


def _weight_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES
    )


def _size_and_mtime(path: Path) -> tuple[int, float]:
    if path.is_file():
        stat = path.stat()
        return stat.st_size, stat.st_mtime
    stats = [p.stat() for p in _weight_files(path)]
    return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def _content_hash(path: Path) -> str:
    """A file's SHA-256; a folder's: SHA-256 over `relative path NUL file hash` lines."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for weights in _weight_files(path):
        relative = weights.relative_to(path).as_posix()
        digest.update(f"{relative}\0{file_sha256(weights)}\n".encode())
    return digest.hexdigest()
