"""`darkroom users ...` and `darkroom credits ...`: account commands for the operator.

They work on the database directly (the data dir's SQLite file, or --database), also
while the server runs: a new token is valid at once, a revoked one refused at once.
"""

from __future__ import annotations

import argparse
import sys

from server.config import Settings
from server.store import Store
from server.store.accounts import UNCHANGED, AccountError, Accounts


def run_account_command(args: argparse.Namespace) -> int:
    settings = Settings.load({"data_dir": args.data_dir, "database_url": args.database})
    try:
        store = Store(settings.database)
    except ConnectionError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    try:
        return _dispatch(Accounts(store), args)
    except AccountError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _dispatch(accounts: Accounts, args: argparse.Namespace) -> int:
    command = (args.command, args.action)
    if command == ("users", "add"):
        user, token = accounts.add_user(
            args.name, args.credits, args.max_active, args.poll_rate, args.admin
        )
        credits = "unlimited credits" if user.unlimited else f"{args.credits:g} credits"
        role = "administrator" if user.admin else "user"
        print(f"created {role} {user.name} with {credits}; their API token (shown once):",
              file=sys.stderr)
        print(token)
    elif command == ("users", "token"):
        token = accounts.new_token(args.name)
        print(f"new API token for {args.name} (shown once; older ones stay valid):",
              file=sys.stderr)
        print(token)
    elif command == ("users", "revoke"):
        count = accounts.revoke(args.name)
        print(f"revoked {count} token(s) of {args.name}")
    elif command == ("users", "webhook-secret"):
        secret = accounts.store.webhook_secret_of(args.name)
        if secret is None:
            raise AccountError(f"no user {args.name!r}")
        print(secret)
    elif command == ("users", "set"):
        if args.admin is not None:
            user = accounts.set_admin(args.name, args.admin)
            print(f"{user.name} is {'an administrator' if user.admin else 'not an administrator'}")
        user = accounts.set_limits(
            args.name,
            getattr(args, "max_active", UNCHANGED),
            getattr(args, "poll_rate", UNCHANGED),
        )
        print(f"{user.name}: {_limits_text(user.max_active, user.poll_rate)}")
    elif command == ("users", "list"):
        _print_users(accounts)
    elif command == ("credits", "add"):
        balance = accounts.add_credits(args.name, args.amount)
        if balance.unlimited:
            print(f"recorded {args.amount:g} credits for {args.name}, who is unlimited")
        else:
            print(f"{args.name}: balance {balance.balance:g}, held {balance.held:g}")
    return 0


def _limits_text(max_active: int | None, poll_rate: float | None) -> str:
    active = "server default" if max_active is None else (max_active or "no limit")
    polls = "server default" if poll_rate is None else (poll_rate and f"{poll_rate:g}/s")
    return f"max active {active}, poll rate {polls or 'no limit'}"


def _print_users(accounts: Accounts) -> None:
    header = (
        f"{'name':<24} {'balance':>10} {'held':>8} {'charged':>9} {'tokens':>6} {'jobs':>6}"
        f" {'active':>7} {'polls/s':>8} admin"
    )
    print(header)
    for row in accounts.summaries():
        if row["builtin"]:
            continue
        credits = row["credits"]
        balance = "unlimited" if credits["unlimited"] else f"{credits['balance']:g}"
        print(
            f"{row['name']:<24} {balance:>10} {credits['held']:>8g} {row['charged']:>9g}"
            f" {row['tokens']:>6} {row['generations']:>6}"
            f" {_or_default(row['max_active']):>7} {_or_default(row['poll_rate']):>8}"
            f" {'yes' if row.get('admin') else ''}"
        )


def _or_default(limit: float | None) -> str:
    """A limit as `users list` shows it: 0 means no limit, as the flags have it."""
    return "default" if limit is None else f"{limit:g}"
