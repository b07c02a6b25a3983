"""Where the PostgreSQL half of the suite runs (tests/pgtest.py): a throwaway server from
the installed binaries, and one summary line when there is no server at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgtest import binaries, free_port, throwaway_server

TESTS = Path(__file__).resolve().parents[1]


def test_a_throwaway_server_runs_from_the_binaries_and_is_gone_afterwards() -> None:
    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    with throwaway_server(bindir) as url:
        with psycopg.connect(url + "postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE darkroom_throwaway")
        with psycopg.connect(url + "darkroom_throwaway") as db:
            assert db.execute("SELECT 1 + 1").fetchone() == (2,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url + "postgres", connect_timeout=3)


def run_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_both.py").write_text(
        "import pytest\n\n\n"
        "@pytest.fixture\n"
        "def database_url(each_engine):\n"
        "    return each_engine\n\n\n"
        "def test_both_engines(database_url):\n"
        "    assert database_url is None or database_url.startswith('postgresql://')\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pgtest", "-p", "no:cacheprovider",
         "test_both.py"],
        cwd=tmp_path,
        env={**environ, "PYTHONPATH": str(TESTS), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_no_server_skips_the_postgresql_half_with_one_summary_line(tmp_path: Path) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/"
    result = run_pytest(tmp_path, DARKROOM_TEST_POSTGRES_URL=nowhere)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "PostgreSQL half SKIPPED" in line]
    assert len(lines) == 1, result.stdout
    assert nowhere in lines[0] and "DARKROOM_TEST_POSTGRES_URL=" in lines[0]


def test_ci_fails_without_a_server(tmp_path: Path) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/"
    result = run_pytest(tmp_path, DARKROOM_TEST_POSTGRES_URL=nowhere, DARKROOM_TEST_POSTGRES="1")
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 error" in result.stdout  # the fixture fails
    assert "DARKROOM_TEST_POSTGRES is set, so this is an error" in result.stdout
