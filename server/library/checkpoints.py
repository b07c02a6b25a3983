"""The checkpoints AUTOMATIC1111's API lists (/sdapi/v1/sd-models) and infotexts name.

For now a server has exactly one model, its `--model`; the model library (issue 14) will
list more. A checkpoint's `hash` is A1111's short hash (the first 10 hex digits of its
SHA-256): of the file for a single-file checkpoint, and for a diffusers folder (the tiny
model, a hub snapshot) of its weight files in path order (each file's relative path, a NUL,
its bytes). Hashes are computed once per file state (path, size, mtime) and cached.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.tiny import TINY_MODEL_NAME

log = logging.getLogger("darkroom.checkpoints")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
SHORT = 10

_lock = threading.Lock()
_hashes: dict[tuple[str, int, float], str] = {}


@dataclass(frozen=True)
class Checkpoint:
    """One entry of /sdapi/v1/sd-models."""

    title: str  # "NAME [HASH10]"
    model_name: str
    hash: str
    sha256: str
    filename: str
    config: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, name: str) -> bool:
        """A1111's checkpoint_aliases: title, file name, model name, short or full hash."""
        name = name.strip()
        return name in {
            self.title,
            self.model_name,
            self.filename,
            Path(self.filename).name,
            self.hash,
            self.sha256,
        }


def describe(model: str, models_dir: Path) -> Checkpoint:
    """The checkpoint `model` (a --model value) names, hashing it on first use."""
    path = _local(model, models_dir)
    if path is None:
        path = _hub_snapshot(model)
    if path is None:  # random-sdxl or a model that is not on disk: no file to hash
        sha256 = hashlib.sha256(model.encode()).hexdigest()
        name, filename = model, model
    else:
        sha256 = _hash(path)
        name = (
            path.stem
            if path.is_file()
            else (path.name if path.parent.name != "snapshots" else model)
        )
        filename = str(path)
    short = sha256[:SHORT]
    label = Path(filename).name if path is not None and path.is_file() else name
    return Checkpoint(f"{label} [{short}]", name, short, sha256, filename)


def warm(model: str, models_dir: Path) -> None:
    """Hash the model ahead of its first use (run in a thread at start-up)."""
    try:
        describe(model, models_dir)
    except OSError as exc:
        log.warning("could not hash the model %s: %s", model, exc)


def listed(model: str, models_dir: Path) -> list[Checkpoint]:
    """Every checkpoint a user may choose (today: the loaded one)."""
    return [describe(model, models_dir)]


def find(name: str, model: str, models_dir: Path) -> Checkpoint | None:
    return next((c for c in listed(model, models_dir) if c.matches(name)), None)


def _local(model: str, models_dir: Path) -> Path | None:
    """As pipelines.sdxl finds a model: `tiny`, a path, or a name under checkpoints/."""
    if model == "tiny":
        return models_dir / "checkpoints" / TINY_MODEL_NAME
    given = Path(model).expanduser()
    for candidate in (given, models_dir / "checkpoints" / model):
        if candidate.exists():
            return candidate
    return None


def _hub_snapshot(model: str) -> Path | None:
    if model.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached, not a hub id, no huggingface_hub
        return None


def _hash(path: Path) -> str:
    files = (
        [path]
        if path.is_file()
        else sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES),
            key=lambda p: p.relative_to(path).as_posix(),
        )
    )
    stats = [f.stat() for f in files]
    key = (str(path), sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0))
    with _lock:
        known = _hashes.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        for file in files:
            if path.is_dir():
                digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            with file.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
        _hashes[key] = result = digest.hexdigest()
    log.info("checkpoint %s: sha256 %s", path, result)
    return result
