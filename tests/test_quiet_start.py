"""Start-up drops what is known to be harmless (server/quiet.py): transformers' "requires
torchvision" warning, printed on every start, never reaches a Darkroom user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the render process imports: diffusers' SDXL pipeline looks up CLIP's image processor.
TRIGGER = "from diffusers import StableDiffusionXLPipeline; import transformers;" \
    " transformers.CLIPImageProcessor"


def stderr_of(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_known_harmless_warnings_are_dropped() -> None:
    assert "requires torchvision" in stderr_of(TRIGGER)  # what a start printed before
    quiet = stderr_of(f"from server.quiet import quiet_start_up; quiet_start_up(); {TRIGGER}")
    assert "torchvision" not in quiet, quiet
