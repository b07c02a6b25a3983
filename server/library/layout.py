"""Where models live under --models-dir: Darkroom's and ComfyUI's layout (`checkpoints/`,
`loras/`) or AUTOMATIC1111's (`Stable-diffusion/`, `Lora/`), so a user can point Darkroom
at the models folder they already have."""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_FOLDERS = ("checkpoints", "Stable-diffusion")
LORA_FOLDERS = ("loras", "Lora")


def checkpoint_dirs(models_dir: Path) -> list[Path]:
    """Every checkpoint folder that exists (both layouts may be present)."""
    return [models_dir / name for name in CHECKPOINT_FOLDERS if (models_dir / name).is_dir()]


def lora_dir(models_dir: Path) -> Path:
    """The LoRA folder: `loras/`, else AUTOMATIC1111's `Lora/` if only that exists."""
    for name in LORA_FOLDERS:
        if (models_dir / name).is_dir():
            return models_dir / name
    return models_dir / LORA_FOLDERS[0]


BAD_NAME_REASON = "its file name is not valid UTF-8: rename it to use it"


def text_path(path: Path | str) -> str:
    """A path as text that any database and JSON can hold: bytes of a name that is not
    UTF-8 become U+FFFD (such a file is listed, never opened by that text)."""
    return os.fsencode(path).decode("utf-8", "replace")


def has_bad_name(path: Path | str) -> bool:
    return text_path(path) != os.fspath(path)
