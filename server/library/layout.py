"""Where models live under --models-dir (Darkroom's or AUTOMATIC1111's folders): the
rules are pipelines.model_folders', shared with the tiny model's builder."""

from __future__ import annotations

from pipelines.model_folders import (
    CHECKPOINT_FOLDERS,
    LORA_FOLDERS,
    checkpoint_dir,
    checkpoint_dirs,
    lora_dir,
)

__all__ = ["CHECKPOINT_FOLDERS", "LORA_FOLDERS", "checkpoint_dir", "checkpoint_dirs", "lora_dir"]
