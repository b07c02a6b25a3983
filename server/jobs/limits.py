"""Token-bucket rate limits, kept in memory (they protect this process, nothing to persist)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from server.config import Settings

PRUNE_EVERY = 1024


class RateLimiter:
    """`rate` requests per second per key, sustained, with bursts of up to `burst`."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)
        self._calls = 0

    def acquire(self, key: Hashable) -> float:
        """Take one request's token: 0 if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        self._calls += 1
        if self._calls % PRUNE_EVERY == 0:
            self._prune(now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def refund(self, key: Hashable) -> None:
        """Give back the token of a request that another limit refused after all."""
        if self.rate > 0 and key in self._buckets:
            tokens, at = self._buckets[key]
            self._buckets[key] = (min(self.burst, tokens + 1.0), at)

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass
class PollLimits:
    """Status polls: per generation (the contract's 1/s), and per user over all of their
    active generations together."""

    per_generation: RateLimiter
    per_user: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> PollLimits:
        users = max(1, settings.max_active_per_user)
        return cls(
            RateLimiter(settings.poll_rate, settings.poll_burst),
            RateLimiter(settings.poll_rate * users, settings.poll_burst * users),
        )

    def wait(self, user_id: int, request_id: str) -> float:
        """0 if the poll may go ahead; else seconds to wait. A refused poll costs nothing:
        hammering one generation must not use up the user's polls of the others. Keyed by
        user too: another user who knows an id must not use up its owner's polls."""
        key = (user_id, request_id)
        wait = self.per_generation.acquire(key)
        if wait > 0:
            return wait
        wait = self.per_user.acquire(user_id)
        if wait > 0:
            self.per_generation.refund(key)
        return wait
