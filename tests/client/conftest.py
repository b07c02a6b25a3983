"""The client's tests run against a server on SQLite, then on PostgreSQL (tests/pgtest.py):
one fresh database per module and engine, shared by the module's server."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def database_url(module_engine: str | None) -> str | None:
    return module_engine
