"""What the client hands back: a generation and its images."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darkroom_client.errors import DarkroomError, error_from

TERMINAL = ("completed", "failed")
EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}


@dataclass
class GeneratedImage:
    """One image of a completed generation; its bytes are fetched on first use."""

    url: str
    vault_url: str | None
    thumbnail_url: str | None
    metadata: dict[str, Any]
    _fetch: Callable[[str], bytes] | None = field(default=None, repr=False, compare=False)
    _afetch: Any = field(default=None, repr=False, compare=False)
    _content: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def seed(self) -> int | None:
        return self.metadata.get("seed")

    @property
    def extension(self) -> str:
        match = re.search(r"\.([A-Za-z0-9]+)(?:\?|$)", self.url or "")
        return EXTENSIONS.get(match.group(1).lower(), match.group(1).lower()) if match else "png"

    def bytes(self) -> bytes:
        """The image file, downloaded once (from `url`, else `vault_url`)."""
        if self._content is None:
            if self._fetch is None:
                raise DarkroomError("this image has no client to download it with")
            self._content = self._fetch(self.url or self.vault_url or "")
        return self._content

    async def abytes(self) -> bytes:
        if self._content is None:
            if self._afetch is None:
                return await asyncio.to_thread(self.bytes)
            self._content = await self._afetch(self.url or self.vault_url or "")
        return self._content

    def file_name(self, request_id: str) -> str:
        return f"{request_id}-{self.seed}.{self.extension}"


@dataclass
class Generation:
    """A generation as the status route last described it (`raw` holds every field)."""

    request_id: str
    status: str
    images: list[GeneratedImage]
    raw: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def error(self) -> DarkroomError | None:
        if self.status != "failed" and not self.raw.get("error"):
            return None
        return error_from(self.raw.get("error") or {}, request_id=self.request_id)

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images if image.seed is not None]

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything but the images: credits_used, estimated_time, queue_position,
        progress, step, total_steps, and in history items prompt/settings/loras/options."""
        return {key: value for key, value in self.raw.items() if key != "images"}

    def __getattr__(self, name: str) -> Any:
        # Additive fields read as attributes: queue_position, progress, step, total_steps...
        raw = self.__dict__.get("raw") or {}
        if name in raw:
            return raw[name]
        if name in ("queue_position", "progress", "step", "total_steps", "estimated_time"):
            return None
        raise AttributeError(name)

    def save(self, directory: str | Path) -> list[Path]:
        """Write each image as `{request_id}-{seed}.{ext}` under `directory`."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for image in self.images:
            path = folder / image.file_name(self.request_id)
            _write(path, image.bytes())
            paths.append(path)
        return paths

    async def asave(self, directory: str | Path) -> list[Path]:
        for image in self.images:
            await image.abytes()
        return await asyncio.to_thread(self.save, directory)


def _write(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.part")
    temp.write_bytes(data)
    temp.replace(path)


def parse_generation(
    data: dict[str, Any], fetch: Callable[[str], bytes] | None = None, afetch: Any = None
) -> Generation:
    images = [
        GeneratedImage(
            url=item.get("url") or "",
            vault_url=item.get("vault_url"),
            thumbnail_url=item.get("thumbnail_url"),
            metadata=dict(item.get("metadata") or {}),
            _fetch=fetch,
            _afetch=afetch,
        )
        for item in data.get("images") or []
    ]
    return Generation(str(data.get("request_id", "")), str(data.get("status", "")), images, data)
