"""While another process holds the database's write lock, the server's event loop keeps
answering: /health/live at once, /metrics from its last reading of the database."""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from server.store.postgres import WRITE_LOCK
from tests.conftest import SMALL
from tests.processes import ServerProcess

LOCK_SECONDS = 5.0


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


@contextmanager
def write_locked(database_url: str | None, data: Path) -> Iterator[None]:
    """Another connection holds the write lock: SQLite's (BEGIN IMMEDIATE) or, on
    PostgreSQL, Darkroom's advisory write lock and the generations table's EXCLUSIVE lock
    (no writes, plain reads allowed), as a long migration or maintenance job would."""
    if database_url is None:
        db = sqlite3.connect(data / "darkroom.sqlite3", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")
            db.close()
        return
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        conn.execute("LOCK TABLE generations IN EXCLUSIVE MODE")
        yield


def timed(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    assert response.status_code in (200, 503), response.text
    return time.perf_counter() - started


def test_health_and_metrics_answer_while_another_process_holds_the_write_lock(
    tmp_path: Path, models_dir: Path, database_url: str | None
) -> None:
    data = tmp_path / "data"
    with ServerProcess(data, models_dir, tmp_path / "server.log", "--devices", "none") as server:
        probe = httpx.Client(base_url=server.base, timeout=30)  # one connection, as a prober
        assert probe.get("/metrics").status_code == 200  # a first reading
        writes: list[int] = []

        def submit() -> None:  # needs the write lock: waits for it, off the event loop
            body = {"prompt": "a fox", "settings": {**SMALL, "seed": 1}}
            response = httpx.post(f"{server.base}/image/generate", json=body, timeout=60)
            writes.append(response.status_code)

        with write_locked(database_url, data):
            locked_at = time.monotonic()
            waiting = [threading.Thread(target=submit) for _ in range(3)]
            ready = httpx.Client(base_url=server.base, timeout=30)
            waiting.append(threading.Thread(target=timed, args=(ready, "/health/ready")))
            for thread in waiting:
                thread.start()
            time.sleep(0.3)  # the writes and the readiness probe are in flight
            live = [timed(probe, "/health/live") for _ in range(7)]
            scrapes = [timed(probe, "/metrics") for _ in range(3)]
            assert time.monotonic() - locked_at < LOCK_SECONDS  # all asked while locked
            time.sleep(max(0.0, LOCK_SECONDS - (time.monotonic() - locked_at)))
        for thread in waiting:
            thread.join(60)
        assert statistics.median(live) < 0.1, live
        assert statistics.median(scrapes) < 0.5, scrapes
        assert writes and all(code < 500 for code in writes), writes  # they waited, then went on
        assert probe.get("/health/live").status_code == 200
        probe.close()
        ready.close()
