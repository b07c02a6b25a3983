"""The worker's supervisor: a start-up that keeps failing is retried after a backoff that
doubles (never in a tight loop), logged once per outage; the backoff is capped."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from conftest import AppFactory, generate, wait_done, wait_healthy
from fakes import Fake, Solid
from server.jobs.device_health import Backoff


class FailsToStart(Fake):
    """Loads, but its catalog check raises (as a warm-up or a refresh would) on the first
    `failures` start-ups; records when each start-up began."""

    def __init__(self, failures: int) -> None:
        super().__init__(Solid())
        self.failures = failures
        self.starts: list[float] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            self.starts.append(time.monotonic())

    @property
    def lora_compatibility(self) -> None:  # type: ignore[override]
        if len(self.starts) <= self.failures:
            raise OSError("catalog folder unreadable")
        return None


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(1.0, cap=8.0)
    assert [backoff.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_a_failing_start_up_backs_off_then_serves(
    make_client: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    renderer = FailsToStart(failures=3)
    caplog.set_level(logging.DEBUG, logger="darkroom.worker")
    client = make_client(renderer=renderer, wait=False, device_retry=0.2)
    job = generate(client)  # admitted while the device cannot start; renders once it does
    wait_healthy(client, timeout=30)
    assert wait_done(client, job["request_id"])["status"] == "completed"

    starts = renderer.starts
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    # Three failures, then the start that works; 0.2 s, 0.4 s and 0.8 s apart at least (a
    # restart loop would try every 0.1 s, the supervisor's tick).
    assert len(starts) == 4, gaps
    for gap, backoff in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert gap >= backoff * 0.95, gaps
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([r for r in logged if "could not start" in r.getMessage()]) == 1
    assert sum(r.exc_info is not None for r in logged) == 1  # one traceback per outage
    assert any("started after 3 failed attempt(s)" in r.getMessage() for r in caplog.records)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["worker_restarts"] == 0
