"""PostgreSQL for the tests: the engine matrix's fixtures and the server they run on.

The server, found once per session, the first of:
1. DARKROOM_TEST_POSTGRES_URL, if set (one that does not answer is not replaced);
2. postgresql://postgres@127.0.0.1:5432/, if it answers;
3. a throwaway server: initdb and pg_ctl from PostgreSQL's binaries (on PATH or under
   /usr/lib/postgresql/*/bin) in a temporary directory, on a free port, removed when the
   session ends (run as the `postgres` user when the tests run as root: PostgreSQL
   refuses root);
4. none: the PostgreSQL half is skipped and the pytest summary says so in one line, why
   and how to run it. With DARKROOM_TEST_POSTGRES=1 (CI's .ci/run sets it) it fails instead.

Three ways to put a test module on both engines (all of it on SQLite, then all of it on
PostgreSQL, or test by test):
- `module_engine`: one fresh database per module and engine, for a module whose tests
  share a server (a module-scoped fixture):

      @pytest.fixture(scope="module")
      def database_url(module_engine: str | None) -> str | None:
          return module_engine

  and let every module-scoped fixture that starts a server or runs `darkroom` take
  `database_url`, so it starts after DARKROOM_DATABASE_URL is set for the module;
- `engine_per_test`: the same engine per module, but each test gets a database of its own,
  as each gets a SQLite file of its own in its data dir (`make_client` apps): cloned from
  the module's migrated database, so a test pays no migrations (override `database_url`
  with it, function-scoped);
- `each_engine`: both engines test by test, a fresh database per test (function-scoped).

Either yields None for SQLite (the data dir's file) or the database's URL, also set as
DARKROOM_DATABASE_URL so `darkroom` commands and server processes use it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/"
ENGINES = ["sqlite", "postgresql"]
HOW_TO_RUN = (
    "set DARKROOM_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/ (a user that may create"
    " databases), run a server on 127.0.0.1:5432, or install PostgreSQL's server binaries"
    " (initdb, pg_ctl); DARKROOM_TEST_POSTGRES=1 makes a missing server an error"
)


@dataclass
class Found:
    """Where the session's PostgreSQL tests run: `url`, or why they cannot."""

    url: str | None = None
    problem: str = ""
    origin: str = ""
    skipped: int = 0
    stop: list = field(default_factory=list)


_found: Found | None = None


def answers(url: str, timeout: int = 5) -> str | None:
    """None if a server answers at `url` (its `postgres` database), else why not."""
    try:
        psycopg.connect(url + "postgres", connect_timeout=timeout).close()
        return None
    except psycopg.OperationalError as exc:
        return " ".join(str(exc).split()) or type(exc).__name__  # one line, for the summary


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, newest version first."""
    found = shutil.which("pg_ctl")
    candidates = [str(Path(found).resolve().parent)] if found else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if all((Path(directory) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def throwaway_server(bindir: Path) -> Iterator[str]:
    """A PostgreSQL server of its own in a temporary directory, trust auth on 127.0.0.1;
    stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync")  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
            "-o", options, "start")  # fmt: skip
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def find_server() -> Found:
    url = os.environ.get("DARKROOM_TEST_POSTGRES_URL")
    if url:
        problem = answers(url)
        return Found(None if problem else url, f"no server answers at {url} ({problem})", url)
    problem = answers(DEFAULT_SERVER, timeout=3)
    if problem is None:
        return Found(DEFAULT_SERVER, origin=DEFAULT_SERVER)
    bindir = binaries()
    if bindir is None:
        return Found(problem=f"no server answers at {DEFAULT_SERVER} and no PostgreSQL"
                     " binaries (initdb, pg_ctl) are installed")  # fmt: skip
    server = throwaway_server(bindir)
    try:
        url = server.__enter__()
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"{exc} {detail.decode(errors='replace').strip()}".strip()
        return Found(problem=f"a throwaway server from {bindir} did not start: {reason}")
    return Found(url, origin=f"a throwaway server from {bindir}", stop=[server])


def server_url() -> str:
    """The session's server (found on first use); skips or fails the test without one."""
    global _found
    if _found is None:
        _found = find_server()
    if _found.url is not None:
        return _found.url
    if os.environ.get("DARKROOM_TEST_POSTGRES"):
        pytest.fail(f"{_found.problem}; DARKROOM_TEST_POSTGRES is set, so this is an error")
    _found.skipped += 1
    pytest.skip(f"{_found.problem}; {HOW_TO_RUN}")


@contextmanager
def fresh_database(template: str | None = None) -> Iterator[str]:
    """A new database's URL (empty, or a copy of `template`); dropped afterwards (with any
    connection left to it)."""
    server = server_url()
    name = f"darkroom_test_{uuid.uuid4().hex[:16]}"
    copy = f" TEMPLATE {template}" if template else ""
    with psycopg.connect(server + "postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}{copy}")
    try:
        yield server + name
    finally:
        with psycopg.connect(server + "postgres", autocommit=True) as admin:
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
    """Per test: a module runs each test on both engines by overriding `database_url`."""
    with engine_url(request.param, monkeypatch) as url:
        yield url


@pytest.fixture(scope="module", params=ENGINES)
def module_engine(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Per module: its tests run on SQLite, then on one fresh PostgreSQL database."""
    with pytest.MonkeyPatch.context() as monkeypatch, engine_url(request.param, monkeypatch) as url:
        yield url


@pytest.fixture
def engine_per_test(
    module_engine: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str | None]:
    """Per test, on the module's engine: a copy of the module's migrated database."""
    if module_engine is None:
        yield None
        return
    template = module_engine.rpartition("/")[2]
    if template not in _migrated:  # once per module: later copies start migrated
        from server.store import Store

        Store(module_engine).close()
        _migrated.add(template)
    with fresh_database(template) as url:
        monkeypatch.setenv("DARKROOM_DATABASE_URL", url)
        yield url


_migrated: set[str] = set()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _found is not None and _found.skipped:
        terminalreporter.write_line(
            f"PostgreSQL half SKIPPED ({_found.skipped} tests): {_found.problem}."
            f" To run it: {HOW_TO_RUN}.",
            yellow=True,
            bold=True,
        )
    elif _found is not None and _found.url is not None and _found.stop:
        terminalreporter.write_line(f"PostgreSQL half ran on {_found.origin}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _found is not None:
        for server in _found.stop:
            server.__exit__(None, None, None)
