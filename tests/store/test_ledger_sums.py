"""Credits read back from the ledger are clean numbers: holds and releases summed in
another row order (as PostgreSQL may after `db copy`) leave no float residue such as a
held of -0.0 or -2.8e-17."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from server.accounts_cli import run_account_command
from server.cli import build_parser
from server.store import Store, ledger
from server.store.accounts import Accounts


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


def test_held_sums_to_a_plain_zero_whatever_the_row_order(
    database_url: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = database_url or tmp_path / "darkroom.sqlite3"
    store = Store(target)
    try:
        accounts = Accounts(store)
        user, _ = accounts.add_user("alice", 10)
        # In this order the float sum is 0.3 - 0.1 - 0.2 + 0.1 + 0.2 - 0.3 = -5.6e-17.
        rows = [("hold", 0.3), ("release", 0.1), ("release", 0.2)]
        rows += [("hold", 0.1), ("hold", 0.2), ("release", 0.3)]
        with store.transaction() as db:
            for kind, amount in rows:
                db.execute(
                    "INSERT INTO ledger (user_id, kind, amount, created_at) VALUES (?, ?, ?, ?)",
                    (user.id, kind, amount, time.time()),
                )
        with store.reading() as db:
            balance = ledger.balance(db, user.id)
        assert balance.held == 0 and math.copysign(1, balance.held) == 1
        assert balance.as_json()["held"] == 0 and "-" not in repr(balance.as_json()["held"])
        assert balance.available == 10
    finally:
        store.close()
    where = ["--database", database_url] if database_url else ["--data-dir", str(tmp_path)]
    assert run_account_command(build_parser().parse_args(["users", "list", *where])) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(row for row in out if row.startswith("alice"))
    assert line.split()[1:3] == ["10", "0"]
