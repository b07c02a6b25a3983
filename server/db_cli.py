"""`darkroom db migrate` and `darkroom db copy`: the operator's database commands."""

from __future__ import annotations

import argparse
import sys

from server.config import Settings
from server.store import Store
from server.store.copy import CopyError, copy_database
from server.store.migrations import MIGRATIONS


def run_db_command(args: argparse.Namespace) -> int:
    try:
        if args.action == "migrate":
            return migrate(args)
        return copy(args.source, args.target)
    except (CopyError, ConnectionError) as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1


def migrate(args: argparse.Namespace) -> int:
    settings = Settings.load({"data_dir": args.data_dir, "database_url": args.database})
    store = Store(settings.database)
    try:
        print(
            f"{store.dialect} database at schema version {len(MIGRATIONS)}"
            f" ({store.engine.migrated} migration(s) applied now)"
        )
    finally:
        store.close()
    return 0


def copy(source_target: str, target_target: str) -> int:
    """Both are opened (and so migrated to this version) first; the target must be empty."""
    source = Store(source_target)
    try:
        target = Store(target_target)
        try:
            report = copy_database(source, target)
        finally:
            target.close()
    finally:
        source.close()
    for table, count in report.rows.items():
        print(f"{table:<20} {count:>8} row(s)")
    print(f"copied and verified: row counts of {len(report.rows)} table(s),"
          f" ledger balances of {report.balances} user(s)")
    return 0
