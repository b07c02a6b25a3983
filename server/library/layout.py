"""Where models live under --models-dir: Darkroom's and ComfyUI's layout (`checkpoints/`,
`loras/`) or AUTOMATIC1111's (`Stable-diffusion/`, `Lora/`), so a user can point Darkroom
at the models folder they already have."""

from __future__ import annotations

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
