"""The database schema, one script per version, for SQLite and PostgreSQL alike. Append,
never edit: a database created by an older Darkroom runs the scripts it has not seen yet.

Write a script in SQLite's spelling, within what dialect.py translates for PostgreSQL
(its docstring lists it); the version is PRAGMA user_version on SQLite and the one row of
`schema_version` on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from server.store.dialect import SQLITE, to_postgres

MIGRATIONS: list[str] = [
    """
    CREATE TABLE generations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        prompt TEXT NOT NULL,
        request_json TEXT NOT NULL,
        seed INTEGER NOT NULL,
        seed_fixed INTEGER NOT NULL,
        work_units REAL NOT NULL,
        credits_used REAL NOT NULL DEFAULT 0,
        error_json TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        render_seconds REAL
    );
    CREATE INDEX generations_by_status ON generations(status, id);
    CREATE INDEX generations_by_created ON generations(created_at);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        generation_id INTEGER NOT NULL REFERENCES generations(id),
        idx INTEGER NOT NULL,
        token TEXT NOT NULL UNIQUE,
        seed INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        format TEXT NOT NULL,
        file_name TEXT NOT NULL,
        thumb_name TEXT NOT NULL,
        in_vault INTEGER NOT NULL,
        generation_time_ms INTEGER NOT NULL,
        created_at REAL NOT NULL,
        purged INTEGER NOT NULL DEFAULT 0,
        UNIQUE (generation_id, idx)
    );
    CREATE INDEX images_temporary ON images(in_vault, purged, created_at);
    CREATE TABLE loras (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        file_size INTEGER NOT NULL,
        file_mtime REAL NOT NULL,
        meta_json TEXT NOT NULL,
        available INTEGER NOT NULL DEFAULT 1,
        usage_count INTEGER NOT NULL DEFAULT 0,
        weight_sum REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE presets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        settings_json TEXT NOT NULL,
        loras_json TEXT NOT NULL,
        tags_json TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # LoRA compatibility verdicts per model (its layer shapes): a restart does not recheck.
    """
    CREATE TABLE lora_checks (
        sha256 TEXT NOT NULL,
        model_key TEXT NOT NULL,
        reason TEXT,
        checked_at REAL NOT NULL,
        PRIMARY KEY (sha256, model_key)
    );
    """,
    # Accounts: users, their API tokens (hashes only) and an append-only credit ledger.
    # Everything stored before belongs to the built-in local user (open mode).
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        unlimited INTEGER NOT NULL DEFAULT 1,
        builtin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    INSERT INTO users (id, name, unlimited, builtin, created_at)
        VALUES (1, 'local', 1, 1, (julianday('now') - 2440587.5) * 86400.0);
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users(id),
        secret_sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users(id),
        generation_id INTEGER REFERENCES generations(id),
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'hold', 'release', 'charge')),
        amount REAL NOT NULL,
        note TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX ledger_by_user ON ledger(user_id, kind);
    CREATE UNIQUE INDEX ledger_once_per_generation ON ledger(generation_id, kind)
        WHERE generation_id IS NOT NULL;
    CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
    CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
    ALTER TABLE generations ADD COLUMN user_id INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE generations ADD COLUMN cost REAL NOT NULL DEFAULT 0;
    CREATE INDEX generations_by_user ON generations(user_id, status, id);
    CREATE TABLE presets_by_user (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        settings_json TEXT NOT NULL,
        loras_json TEXT NOT NULL,
        tags_json TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (user_id, name)
    );
    INSERT INTO presets_by_user
        SELECT id, 1, name, settings_json, loras_json, tags_json, created_at, updated_at
        FROM presets;
    DROP TABLE presets;
    ALTER TABLE presets_by_user RENAME TO presets;
    """,
    # The model library: checkpoints by content hash (hashing is cached by path, size and
    # mtime), and which model rendered each image.
    """
    CREATE TABLE models (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        name TEXT NOT NULL,
        file_size INTEGER NOT NULL,
        file_mtime REAL NOT NULL,
        format TEXT NOT NULL,
        base_model TEXT NOT NULL,
        reason TEXT,
        available INTEGER NOT NULL DEFAULT 1
    );
    ALTER TABLE images ADD COLUMN model TEXT;
    ALTER TABLE images ADD COLUMN model_hash TEXT;
    """,
    # Per-user options of AUTOMATIC1111's API (issue 15), one JSON value per name: today
    # `sd_model_checkpoint`, the title of the checkpoint the user chose as their default.
    """
    CREATE TABLE user_options (
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        value_json TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (user_id, name)
    );
    """,
    # Secrets every node shares: the key that signs image links (was vault/signing.key).
    """
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # Webhooks: one delivery per generation that asked for one, written at submit
    # ('waiting') and armed ('pending') in the transaction that ends the generation; each
    # user's signing secret (created on first need).
    """
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users(id),
        url TEXT NOT NULL,
        base_url TEXT NOT NULL,
        webhook_id TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        ended_at REAL,
        next_attempt_at REAL,
        last_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
    CREATE TABLE webhook_secrets (
        user_id INTEGER PRIMARY KEY REFERENCES users(id),
        secret TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,    # Providers (server/providers/): where each generation renders (NULL: this server's
    # own pool, "darkroom"), and a remote job's handle (request id, status and cancel URLs)
    # so that a restart resumes watching it rather than submitting it again.
    """
    ALTER TABLE generations ADD COLUMN provider TEXT;
    ALTER TABLE generations ADD COLUMN remote_json TEXT;
    """,
    # Several nodes on one PostgreSQL database (issue 18): a claimed job's node and lease,
    # when each user was last served (the fair order, shared), the nodes and heartbeats.
    """
    ALTER TABLE generations ADD COLUMN node_id TEXT;
    ALTER TABLE generations ADD COLUMN lease_until REAL;
    CREATE INDEX generations_by_node ON generations(node_id, status);
    CREATE TABLE queue_users (
        user_id INTEGER PRIMARY KEY,
        last_served REAL NOT NULL
    );
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        started_at REAL NOT NULL,
        last_heartbeat REAL NOT NULL,
        devices TEXT NOT NULL DEFAULT ''
    );
    """,
    # Idempotency-Key (server/api/idempotency.py): per user, what a key's first request
    # asked (a hash), the claim of the request admitting under it, the generation it
    # admitted (bound in admission's own transaction) and the answer it got, for 24 h.
    """
    CREATE TABLE idempotency_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users(id),
        idempotency_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        claim TEXT NOT NULL,
        request_id TEXT,
        response_status INTEGER,
        response_json TEXT,
        created_at REAL NOT NULL,
        UNIQUE (user_id, idempotency_key)
    );
    CREATE INDEX idempotency_keys_by_created ON idempotency_keys(created_at);
    """,
    # The console (server/console/): administrators (the open-mode local user is one), the
    # device that rendered a generation, its LoRA ids as ",3,7," for the gallery's filter,
    # when its owner deleted it (a tombstone the ledger's rows point at), and the gallery's
    # order per user.
    """
    ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
    UPDATE users SET admin = 1 WHERE builtin = 1;
    ALTER TABLE generations ADD COLUMN device TEXT;
    ALTER TABLE generations ADD COLUMN lora_ids TEXT;
    ALTER TABLE generations ADD COLUMN deleted_at REAL;
    CREATE INDEX generations_by_user_created ON generations(user_id, created_at);
    """,
    # Per-user limits (`darkroom users set NAME --max-active N --poll-rate R`); NULL: the
    # server's flags.
    """
    ALTER TABLE users ADD COLUMN max_active INTEGER;
    ALTER TABLE users ADD COLUMN poll_rate REAL;
    """,
    # A blocking call (AUTOMATIC1111's txt2img) waits on an open connection to the node
    # named here; NULL: a contract call, whose caller polls. When that node restarts, the
    # connection is gone: the call's generation is cancelled, not rendered for no one.
    """
    ALTER TABLE generations ADD COLUMN caller_node TEXT;
    """,
    # An image-to-image's input files (init image, mask; content-addressed in the vault)
    # by the generations naming them, so deleting the last one removes the file
    # (server/store/inputs.py). Those of generations already stored are read from their
    # requests.
    """
    CREATE TABLE generation_inputs (
        generation_id INTEGER NOT NULL REFERENCES generations(id),
        name TEXT NOT NULL,
        PRIMARY KEY (generation_id, name)
    );
    CREATE INDEX generation_inputs_by_name ON generation_inputs(name);
    INSERT INTO generation_inputs (generation_id, name)
        SELECT id, json_extract(request_json, '$.image_job.inputs.init_image.name')
        FROM generations
        WHERE json_extract(request_json, '$.image_job.inputs.init_image.name') IS NOT NULL;
    INSERT INTO generation_inputs (generation_id, name)
        SELECT id, json_extract(request_json, '$.image_job.inputs.mask.name')
        FROM generations
        WHERE json_extract(request_json, '$.image_job.inputs.mask.name') IS NOT NULL
        ON CONFLICT (generation_id, name) DO NOTHING;
    """,
]


def migrate(db: Any, dialect: str) -> int:
    """Run the scripts this database has not seen, inside the caller's write transaction:
    the version is read there too, so two processes opening a new database at once (the
    server and `darkroom users add`, or several nodes) migrate it once. On PostgreSQL the
    caller holds an advisory lock as well (a new database has no table to lock yet).
    Returns how many scripts ran."""
    version = _version(db, dialect)
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        for statement in _statements(script):
            db.execute(statement if dialect == SQLITE else to_postgres(statement))
        if dialect == SQLITE:
            db.execute(f"PRAGMA user_version={number}")
        else:
            db.execute("UPDATE schema_version SET version = ?", (number,))
    return len(MIGRATIONS) - version


def _version(db: Any, dialect: str) -> int:
    if dialect == SQLITE:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        db.execute("INSERT INTO schema_version (version) VALUES (0)")
        return 0
    return int(row[0])


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements; a trigger body's semicolons do not end one."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
