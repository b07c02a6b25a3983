"""PostgreSQL for the tests: a fresh database per test on the server the machines run.

With DARKROOM_TEST_POSTGRES=1 (CI's .ci/run sets it) a server that does not answer fails
the PostgreSQL tests; without it they are skipped. DARKROOM_TEST_POSTGRES_URL points at
another server (default postgresql://postgres@127.0.0.1:5432/).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

SERVER = os.environ.get("DARKROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/")
ENGINES = ["sqlite", "postgresql"]


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(SERVER + "postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"no PostgreSQL server answers at {SERVER} ({exc})".strip()
        if os.environ.get("DARKROOM_TEST_POSTGRES"):
            pytest.fail(f"{message}; DARKROOM_TEST_POSTGRES is set, so this is an error")
        pytest.skip(f"{message}; set DARKROOM_TEST_POSTGRES=1 to make this an error")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database's URL; dropped afterwards (with any connection left to it)."""
    name = f"darkroom_test_{uuid.uuid4().hex[:16]}"
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield SERVER + name
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def engine_url(engine: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """None for SQLite (the data dir's file), else a fresh PostgreSQL database's URL, also
    set as DARKROOM_DATABASE_URL so `darkroom` commands and server processes use it."""
    if engine == "sqlite":
        monkeypatch.delenv("DARKROOM_DATABASE_URL", raising=False)
        yield None
        return
    with fresh_database() as url:
        monkeypatch.setenv("DARKROOM_DATABASE_URL", url)
        yield url


@pytest.fixture(params=ENGINES)
def each_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A test module runs on both engines by overriding `database_url` with this one."""
    with engine_url(request.param, monkeypatch) as url:
        yield url
