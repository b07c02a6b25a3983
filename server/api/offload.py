"""The one way a handler makes a call that may block: the database (a query waits behind
another process's write lock, or a PostgreSQL round trip), the cluster's shared queue, a
remote provider's HTTP. It runs in a worker thread, so the event loop keeps answering health
probes, event streams and every other request meanwhile.

Database calls get their own pool of threads: SQLite serialises them on one connection
anyway, and a pile of them waiting on a locked database must not starve what else Starlette
runs in threads (file responses, sync routes).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ParamSpec, TypeVar

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar

BLOCKING_THREADS = 16

P = ParamSpec("P")
T = TypeVar("T")

_limiter: RunVar[CapacityLimiter] = RunVar("darkroom_offload_limiter")


def limiter() -> CapacityLimiter:
    """This event loop's limiter (a test runs several apps, each on its own loop)."""
    try:
        return _limiter.get()
    except LookupError:
        _limiter.set(found := CapacityLimiter(BLOCKING_THREADS))
        return found


async def off_loop(call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`call(*args, **kwargs)` in a worker thread; its exceptions are raised here."""
    return await to_thread.run_sync(partial(call, *args, **kwargs), limiter=limiter())
