"""Token-bucket rate limits, kept in memory (they protect this process, nothing to persist)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from server.config import Settings
from server.store.accounts import User

PRUNE_EVERY = 1024


class RateLimiter:
    """`rate` requests per second per key, sustained, with bursts of up to `burst`; a key
    may have its own rate and burst (a user's own limits)."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        # key -> (tokens, at, when the bucket is full again whatever is left)
        self._buckets: dict[Hashable, tuple[float, float, float]] = {}
        self._calls = 0

    def acquire(
        self, key: Hashable, rate: float | None = None, burst: float | None = None
    ) -> float:
        """Take one request's token: 0 if allowed, else the seconds until one is available."""
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else max(1.0, burst)
        if rate <= 0:
            return 0.0
        now = self.clock()
        tokens, at, _ = self._buckets.get(key, (burst, now, now))
        tokens = min(burst, tokens + (now - at) * rate)
        self._calls += 1
        if self._calls % PRUNE_EVERY == 0:
            self._prune(now)
        if tokens >= 1.0:
            tokens -= 1.0
            self._buckets[key] = (tokens, now, now + (burst - tokens) / rate)
            return 0.0
        self._buckets[key] = (tokens, now, now + (burst - tokens) / rate)
        return (1.0 - tokens) / rate

    def refund(self, key: Hashable) -> None:
        """Give back the token of a request that another limit refused after all."""
        if key in self._buckets:
            tokens, at, full = self._buckets[key]
            self._buckets[key] = (tokens + 1.0, at, full)

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True)
class UserLimits:
    """A user's own limits where they have them, else the server's flags."""

    max_active: int  # 0: no limit
    poll_rate: float  # status polls per second per generation; 0: no limit

    @classmethod
    def of(cls, user: User, settings: Settings) -> UserLimits:
        return cls(
            settings.max_active_per_user if user.max_active is None else user.max_active,
            settings.poll_rate if user.poll_rate is None else user.poll_rate,
        )


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

    def wait(self, user_id: int, request_id: str, limits: UserLimits | None = None) -> float:
        """0 if the poll may go ahead; else seconds to wait. A refused poll costs nothing:
        hammering one generation must not use up the user's polls of the others. Keyed by
        user too: another user who knows an id must not use up its owner's polls. `limits`:
        the user's own (None: the server's)."""
        rate = burst = user_rate = user_burst = None
        if limits is not None:
            active = max(1, limits.max_active)
            rate, burst = limits.poll_rate, self.per_generation.burst
            user_rate, user_burst = rate * active, burst * active
        key = (user_id, request_id)
        wait = self.per_generation.acquire(key, rate, burst)
        if wait > 0:
            return wait
        wait = self.per_user.acquire(user_id, user_rate, user_burst)
        if wait > 0:
            self.per_generation.refund(key)
        return wait
