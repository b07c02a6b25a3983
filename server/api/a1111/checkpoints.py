"""The model library as AUTOMATIC1111's API shows it (/sdapi/v1/sd-models, options,
override_settings): its checkpoint titles and aliases over server.library.checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.library.checkpoints import ModelEntry
from server.state import AppState


@dataclass(frozen=True)
class Checkpoint:
    entry: ModelEntry

    @property
    def title(self) -> str:
        return self.entry.title

    @property
    def model_name(self) -> str:
        return self.entry.name

    @property
    def hash(self) -> str | None:
        return self.entry.hash

    @property
    def sha256(self) -> str | None:
        return self.entry.sha256

    @property
    def filename(self) -> str:
        return self.entry.path

    def setting(self) -> str | None:
        """What `settings.model` of the generation says (None: the server's default)."""
        return None if self.entry.default else self.entry.title

    def matches(self, name: str) -> bool:
        """A1111's checkpoint_aliases: title, file name, model name, short or full hash."""
        name = name.strip()
        aliases = {self.title, self.model_name, self.filename, Path(self.filename).name}
        return name in aliases | {self.hash, self.sha256} - {None}

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.hash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": None,
            # Beyond AUTOMATIC1111's fields: an SDXL inpainting model renders inpainting only.
            "inpainting": self.entry.inpainting,
        }


def listed(state: AppState) -> list[Checkpoint]:
    """Every checkpoint a user may choose, the server's default first."""
    entries = sorted(state.models.entries(), key=lambda entry: not entry.default)
    return [Checkpoint(entry) for entry in entries]
