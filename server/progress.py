"""A job in flight, as the local workers and the remote providers both track it: its
progress and the flag that stops it. Below jobs/ and providers/, which both use it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    """A job the worker is running: its progress, and a flag that stops it between steps.
    The jobs of one batch share their steps."""

    generation_id: int
    work_units: float
    user_id: int = 0
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    total_steps: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "cancelled", "timeout" or "shutdown"
    preview_wanted: bool = False
    preview: str | None = None  # a data URL of the latest latent preview
    preview_step: int = 0

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop.set()
