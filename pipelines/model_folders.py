"""Where models live under --models-dir: Darkroom's and ComfyUI's layout (`checkpoints/`,
`loras/`) or AUTOMATIC1111's (`Stable-diffusion/`, `Lora/`), so a user can point Darkroom
at the models folder they already have. The server's library reads these folders; the
tiny model is built into them (and must not add Darkroom's folders beside A1111's)."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_FOLDERS = ("checkpoints", "Stable-diffusion")
LORA_FOLDERS = ("loras", "Lora")


def checkpoint_dirs(models_dir: Path) -> list[Path]:
    """Every checkpoint folder that exists (both layouts may be present)."""
    return [models_dir / name for name in CHECKPOINT_FOLDERS if (models_dir / name).is_dir()]


def checkpoint_dir(models_dir: Path) -> Path:
    """Where a new checkpoint goes: `checkpoints/`, else AUTOMATIC1111's `Stable-diffusion/`
    if only that exists."""
    return _first_existing(Path(models_dir), CHECKPOINT_FOLDERS)


def lora_dir(models_dir: Path) -> Path:
    """The LoRA folder: `loras/`, else AUTOMATIC1111's `Lora/` if only that exists."""
    return _first_existing(Path(models_dir), LORA_FOLDERS)


def _first_existing(models_dir: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (models_dir / name).is_dir():
            return models_dir / name
    return models_dir / names[0]
