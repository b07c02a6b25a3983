"""A quiet start: what `darkroom` would print on every start that is known to be harmless
is dropped, in the server and in the render processes it spawns."""

from __future__ import annotations

import logging
import os

# (logger, text): messages that show on every start and mean nothing to a Darkroom user.
HARMLESS = (
    # Darkroom loads no image processor: torchvision would only add a large install.
    ("transformers.utils.import_utils", "requires torchvision (not installed)"),
)


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_start_up() -> None:
    """Drop the HARMLESS messages, and the progress bars of writing the tiny model (spawned
    render processes inherit the environment variable)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name, text in HARMLESS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.text == text for f in logger.filters):
            logger.addFilter(_Drop(text))
