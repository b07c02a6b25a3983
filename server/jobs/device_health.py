"""One device's record: jobs done, failures, and whether it is in service.

A device is taken out of service when its render process dies or when it fails
`max_failures` jobs in a row with errors that are not the request's fault (a LoRA or a
model file that will not load, running out of memory on a too-large request, a
cancellation or a timeout count neither way). It is retried after a backoff that doubles
with each outage in a row (`retry_seconds`, 2x, 4x ... at most RETRY_CAP_SECONDS) and
resets once it completes a job again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

RETRY_CAP_SECONDS = 300.0

# Outcomes counted per device (darkroom_device_jobs_total{device,outcome}).
COMPLETED, DEVICE_ERROR, REQUEST_ERROR, STOPPED, REQUEUED = (
    "completed",
    "device_error",
    "request_error",
    "stopped",
    "requeued",
)


class Backoff:
    """Delays for retrying what keeps failing: `base`, then doubled each failure in a row,
    at most `cap`; `reset()` after a success."""

    def __init__(self, base: float, cap: float = RETRY_CAP_SECONDS) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the delay before the next try."""
        self.failures += 1
        return min(self.base * 2 ** (self.failures - 1), self.cap)

    def reset(self) -> None:
        self.failures = 0


class DeviceHealth:
    def __init__(self, name: str, max_failures: int = 3, retry_seconds: float = 10.0) -> None:
        self.name = name
        self.max_failures = max(1, max_failures)
        self.retry_seconds = retry_seconds
        self.outcomes: Counter[str] = Counter()
        self.failures = 0
        self.consecutive_failures = 0
        self._backoff = Backoff(retry_seconds)  # its failures: outages in a row
        self.reason: str | None = None  # why it is (or last was) out of service
        self.retry_at: float | None = None  # monotonic; None while in service
        self._lock = threading.Lock()

    @property
    def jobs_done(self) -> int:
        return self.outcomes[COMPLETED]

    @property
    def out_of_service(self) -> bool:
        return self.retry_at is not None

    def count(self, outcome: str, jobs: int = 1) -> None:
        with self._lock:
            self.outcomes[outcome] += jobs
            if outcome == COMPLETED:
                self.consecutive_failures = 0
                self._backoff.reset()

    def failed(self, reason: str, jobs: int = 1) -> bool:
        """A job (batch) failed through no fault of its request; True if that took the
        device out of service."""
        with self._lock:
            self.outcomes[DEVICE_ERROR] += jobs
            self.failures += 1
            self.consecutive_failures += 1
            if self.consecutive_failures < self.max_failures:
                return False
        self.take_out(f"{self.consecutive_failures} failures in a row, the last: {reason}")
        return True

    def take_out(self, reason: str) -> None:
        with self._lock:
            self.reason = reason
            self.retry_at = time.monotonic() + self._backoff.next_delay()

    def seconds_to_retry(self) -> float:
        return max(0.0, (self.retry_at or 0.0) - time.monotonic())

    def back_in_service(self) -> None:
        with self._lock:
            self.retry_at = None
            self.consecutive_failures = 0

    def died(self, reason: str, jobs: int = 0) -> None:
        """The render process ended under its jobs (re-queued): out of service at once."""
        with self._lock:
            self.outcomes[REQUEUED] += jobs
            self.failures += 1
            self.consecutive_failures += 1
        self.take_out(reason)
