"""The database's counts that /metrics reports (jobs by status, images, deliveries,
provider jobs), read by a thread of their own and served from the last reading.

A scrape asks for a fresh reading and waits for it at most `wait` seconds; past that it
gets the previous one. Once scraped, the figures are also read every REFRESH_SECONDS, so
what a scrape gets is that old at most while the database answers. A scrape never waits on
a database that another process has locked, and two scrapes at once read it once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from server.store import Store

log = logging.getLogger("darkroom")

FRESH_WAIT_SECONDS = 0.25
REFRESH_SECONDS = 5.0


class DatabaseFigures:
    def __init__(self, store: Store, wait: float = FRESH_WAIT_SECONDS) -> None:
        self.store = store
        self.wait = wait
        self.read_at = 0.0  # time.monotonic() of the reading served
        self._figures: dict[str, Any] | None = None
        self._asked = self._answered = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="darkroom-figures", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Ask for a reading that starts now; wait for it up to `wait` seconds (for the
        very first one, as long as it takes: there is nothing older to serve)."""
        with self._cond:
            self._asked += 1
            asked = self._asked
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._answered >= asked or self._closed, self.wait)
            self._cond.wait_for(lambda: self._figures is not None or self._closed)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def finished_counts(self) -> list[dict[str, Any]]:
        return self._get("finished", [])

    def image_count(self) -> int:
        return self._get("images", 0)

    def webhook_counts(self) -> dict[str, int]:
        return self._get("webhooks", {})

    def provider_counts(self) -> list[dict[str, Any]]:
        return self._get("providers", [])

    def _get(self, name: str, empty: Any) -> Any:
        with self._cond:
            return (self._figures or {}).get(name, empty)

    def _read(self) -> dict[str, Any]:
        store = self.store
        return {
            "finished": store.finished_counts(),
            "images": store.image_count(),
            "webhooks": store.webhook_counts(),
            "providers": store.provider_counts(),
        }

    def _run(self) -> None:
        while True:
            with self._cond:
                # Not scraped yet: nothing to read until asked. Scraped: read now and then.
                self._cond.wait_for(
                    lambda: self._asked > self._answered or self._closed,
                    REFRESH_SECONDS if self._asked else None,
                )
                if self._closed:
                    return
                asked = self._asked  # every ask so far is answered by a reading begun now
            try:
                figures = self._read()
            except Exception:  # the database gone or closing: keep serving the last reading
                log.warning("metrics: could not read the database's counts", exc_info=True)
                figures = None
            with self._cond:
                if figures is not None:
                    self._figures, self.read_at = figures, time.monotonic()
                elif self._figures is None:
                    self._figures = {}
                self._answered = asked
                self._cond.notify_all()
