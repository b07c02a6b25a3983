"""Where models live under --models-dir (Darkroom's or AUTOMATIC1111's folders): the
rules are pipelines.model_folders', shared with the tiny model's builder."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.model_folders import (
    CHECKPOINT_FOLDERS,
    LORA_FOLDERS,
    checkpoint_dir,
    checkpoint_dirs,
    lora_dir,
)

__all__ = [
    "CHECKPOINT_FOLDERS", "LORA_FOLDERS", "checkpoint_dir", "checkpoint_dirs", "lora_dir",
    "BAD_NAME_REASON", "text_path", "has_bad_name",
]  # fmt: skip

BAD_NAME_REASON = "its file name is not valid UTF-8: rename it to use it"


def text_path(path: Path | str) -> str:
    """A path as text that any database and JSON can hold: bytes of a name that is not
    UTF-8 become U+FFFD (such a file is listed, never opened by that text)."""
    return os.fsencode(path).decode("utf-8", "replace")


def has_bad_name(path: Path | str) -> bool:
    return text_path(path) != os.fspath(path)
