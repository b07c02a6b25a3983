"""Event-loop lag while handlers query the database: each call made on the loop (as
handlers did before server/api/offload.py) beside the same call through `off_loop`.

A ticker task sleeps TICK seconds over and over and records how late it wakes: that
lateness is what every other request on the server (a health probe, an event stream)
waits on top of its own work. Two workloads, each run both ways:

- reads: C concurrent "requests", each reading one generation row R times;
- locked: another connection holds the write lock for --lock-seconds while C requests
  each try one write (SQLite's BEGIN IMMEDIATE waits in busy_timeout; PostgreSQL's
  advisory lock waits in the server).

    .venv/bin/python scripts/loop_lag.py                       # SQLite in a scratch dir
    .venv/bin/python scripts/loop_lag.py --database postgresql://postgres@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.api import offload  # noqa: E402
from server.api.offload import off_loop  # noqa: E402
from server.store import Store  # noqa: E402
from server.store.postgres import WRITE_LOCK  # noqa: E402

TICK = 0.005


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - started - TICK)


async def measure(work: Callable[[], Awaitable[None]]) -> tuple[float, float, float]:
    """(median, p99, max) lag in ms of a ticker running beside `work`, and nothing else."""
    stop, lags = asyncio.Event(), []
    tick = asyncio.create_task(ticker(stop, lags))
    await asyncio.sleep(0.05)
    await work()
    stop.set()
    await tick
    lags.sort()
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    return 1000 * statistics.median(lags), 1000 * p99, 1000 * lags[-1]


def seed(store: Store, rows: int) -> None:
    with store.transaction() as db:
        db.execute("DELETE FROM generations WHERE request_id LIKE 'lag-%'")
        db.executemany(
            "INSERT INTO generations (request_id, status, prompt, request_json, seed,"
            " seed_fixed, work_units, created_at) VALUES (?, 'completed', 'a fox', '{}', ?, 1,"
            " 1, ?)",
            [(f"lag-{i}", i, time.time()) for i in range(rows)],
        )


@contextmanager
def write_locked(store: Store, target: str, seconds: float) -> Iterator[None]:
    """Another connection holds the write lock for `seconds`, from a thread of its own."""
    taken = threading.Event()

    def hold() -> None:
        if store.dialect == "sqlite":
            db = sqlite3.connect(target, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            db.execute("ROLLBACK")
            db.close()
            return
        import psycopg

        with psycopg.connect(target) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            taken.set()
            time.sleep(seconds)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait()
    try:
        yield
    finally:
        holder.join()


def write(store: Store) -> None:
    with store.transaction() as db:
        db.execute("UPDATE generations SET work_units = work_units WHERE request_id = 'lag-0'")


async def run(store: Store, target: str, args: argparse.Namespace) -> list[tuple]:
    async def direct(call: Callable[[], object]) -> None:
        call()

    async def threaded(call: Callable[[], object]) -> None:
        await off_loop(call)

    async def reads(how: Callable[[Callable[[], object]], Awaitable[None]]) -> None:
        async def one(i: int) -> None:
            for _ in range(args.reads):
                await how(lambda: store.generation(f"lag-{i % args.rows}", None))
                await asyncio.sleep(0)

        await asyncio.gather(*(one(i) for i in range(args.concurrency)))

    async def locked(how: Callable[[Callable[[], object]], Awaitable[None]]) -> None:
        with write_locked(store, target, args.lock_seconds):
            await asyncio.gather(*(how(lambda: write(store)) for _ in range(args.concurrency)))

    results = []
    for name, how in (("on the loop", direct), ("off_loop", threaded)):
        results.append(("reads", name, *await measure(lambda: reads(how))))  # noqa: B023
        results.append(("locked", name, *await measure(lambda: locked(how))))  # noqa: B023
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", help="a postgresql:// URL (default: SQLite, scratch)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--reads", type=int, default=50, help="reads per request")
    parser.add_argument("--lock-seconds", type=float, default=2.0)
    parser.add_argument(
        "--threads", type=int, default=offload.BLOCKING_THREADS, help="off_loop's thread pool"
    )
    args = parser.parse_args()
    offload.BLOCKING_THREADS = args.threads
    with tempfile.TemporaryDirectory() as scratch:
        target = args.database or str(Path(scratch) / "lag.sqlite3")
        store = Store(target)
        try:
            seed(store, args.rows)
            results = asyncio.run(run(store, target, args))
        finally:
            store.close()
    print(f"engine: {store.dialect}; off_loop threads: {args.threads};"
          f" ticker every {TICK * 1000:g} ms; lag in ms")
    print(f"{'workload':8}  {'calls made':12}  {'median':>8}  {'p99':>8}  {'max':>8}")
    for workload, name, median, p99, worst in results:
        print(f"{workload:8}  {name:12}  {median:8.2f}  {p99:8.2f}  {worst:8.2f}")
    by = {(w, n): worst for w, n, _, _, worst in results}
    for workload in ("reads", "locked"):
        ratio = by[(workload, "on the loop")] / max(by[(workload, "off_loop")], 1e-6)
        print(f"{workload}: worst lag on the loop / off_loop = {ratio:.1f}x")


if __name__ == "__main__":
    main()
