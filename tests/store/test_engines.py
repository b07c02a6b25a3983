"""The store's guarantees on both engines: migrations, the ledger, ids, JSON queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import Store
from server.store import ledger as ledger_rows
from server.store.accounts import Accounts
from server.store.dialect import placeholders, to_postgres
from server.store.generations import NewImage
from server.store.migrations import MIGRATIONS
from server.store.vault import Vault


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    """Every test here that opens a database runs on SQLite and on PostgreSQL."""
    return each_engine


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[Store]:
    opened = Store(database_url or tmp_path / "darkroom.sqlite3")
    yield opened
    opened.close()


def insert(store: Store, request_id: str = "r1", user_id: int = 1, cost: float = 0.5) -> int:
    request = {"settings": {"width": 256, "height": 512}}
    return store.insert_generation(request_id, "p", request, 2**32 - 1, True, 0.1, user_id, cost)


def test_a_second_open_migrates_nothing_and_keeps_the_version(
    store: Store, tmp_path: Path, database_url: str | None
) -> None:
    again = Store(database_url or tmp_path / "darkroom.sqlite3")
    try:
        if database_url:
            row = again.fetch_one("SELECT version FROM schema_version")
            assert row == {"version": len(MIGRATIONS)}
            assert again.fetch_one("SELECT COUNT(*) AS n FROM schema_version") == {"n": 1}
        assert again.fetch_one("SELECT name FROM users WHERE id = 1") == {"name": "local"}
    finally:
        again.close()


def test_the_ledger_is_append_only(store: Store) -> None:
    user, _ = Accounts(store).add_user("alice", 5)
    for statement in ("UPDATE ledger SET amount = 500", "DELETE FROM ledger"):
        with pytest.raises(store.engine.errors, match="append-only"), store.transaction() as db:
            db.execute(statement)
    if store.engine.dialect != "sqlite":
        with pytest.raises(store.engine.errors, match="append-only"), store.transaction() as db:
            db.execute("TRUNCATE ledger")
    assert Accounts(store).balance(user.id).balance == 5


def test_one_ledger_row_of_each_kind_per_generation(store: Store) -> None:
    generation_id = insert(store)
    with pytest.raises(store.engine.errors), store.transaction() as db:
        ledger_rows.hold(db, 1, generation_id, 0.5)
    assert store.complete(generation_id, [], 0.25, 1.0, []) is False  # pending, not running
    assert store.mark_processing(generation_id)
    assert store.complete(generation_id, [], 0.25, 1.0, [])
    assert store.fail(generation_id, {"code": "CANCELLED"}) is False  # already finished
    kinds = store.fetch_all(
        "SELECT kind, amount FROM ledger WHERE generation_id = ? ORDER BY id", (generation_id,)
    )
    assert kinds == [
        {"kind": "hold", "amount": 0.5},
        {"kind": "release", "amount": 0.5},
        {"kind": "charge", "amount": 0.25},
    ]


def test_a_refused_admission_writes_nothing(store: Store) -> None:
    def refuse(db) -> None:  # type: ignore[no-untyped-def]
        assert store.active_count(db, 1) == 0 and store.pending_count(db) == 0
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        store.insert_generation("r1", "p", {}, 1, True, 0.1, 1, 0.5, refuse)
    assert store.fetch_one("SELECT COUNT(*) AS n FROM generations") == {"n": 0}
    assert store.fetch_one("SELECT COUNT(*) AS n FROM ledger") == {"n": 0}


def test_rows_ids_and_queries_behave_alike(store: Store) -> None:
    accounts = Accounts(store)
    user, token = accounts.add_user("alice", 2)
    assert user.id == 2  # after the local user, also where that id was inserted explicitly
    assert accounts.by_token(token) == user
    first, second = insert(store, "r1", user.id), insert(store, "r2", user.id)
    assert second == first + 1
    row = store.generation("r1", user.id)
    assert row is not None and row["seed"] == 2**32 - 1 and row["status"] == "pending"
    assert store.mark_processing(first)
    store.release(first)
    assert store.generation_by_id(first)["attempts"] == 0  # type: ignore[index]
    assert store.mark_processing(first)
    image = NewImage(0, "tok", 7, 256, 512, "png", "keep/a.png", "keep/a.thumb.webp", True, 5)
    assert store.complete(first, [image], 0.1, 2.0, [])
    assert store.fail(second, {"code": "CANCELLED"})
    assert store.seconds_per_work_unit() == pytest.approx(20.0)
    assert store.seconds_per_work_unit_by_size() == {256 * 512: pytest.approx(20.0)}
    counts = {(r["status"], r["code"]): r["n"] for r in store.finished_counts()}
    assert counts == {("completed", ""): 1, ("failed", "CANCELLED"): 1}
    assert store.image_by_token("tok")["file_name"] == "keep/a.png"  # type: ignore[index]
    rows, total = store.history(user.id, 1, 10, None, True)
    assert total == 2 and [r["request_id"] for r in rows] == ["r2", "r1"]
    preset, created = store.save_preset(user.id, "mine", {"steps": 20}, [], ["x"])
    again, created_again = store.save_preset(user.id, "mine", {"steps": 30}, [], [])
    assert created and not created_again and again["id"] == preset["id"]
    store.save_lora_verdicts("model", {"abc": None, "def": "sd15"})
    store.save_lora_verdicts("model", {"def": None})
    assert store.lora_verdicts("model") == {"abc": None, "def": None}
    balance = accounts.balance(user.id)
    assert (balance.balance, balance.held) == (pytest.approx(1.9), 0)
    assert store.writable()
    found = store.fetch_all("SELECT name FROM users WHERE name LIKE ? AND name <> '?'", ("al%",))
    assert found == [{"name": "alice"}]


def test_dialect_translation() -> None:
    assert placeholders("SELECT * FROM t WHERE a = ? AND b LIKE '%?%'") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE '%%?%%'"
    )
    trigger = to_postgres(
        "CREATE TRIGGER t_no_delete BEFORE DELETE ON t\n"
        "    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;"
    )
    assert "RAISE EXCEPTION 'the ledger is append-only'" in trigger
    assert "BEFORE TRUNCATE ON t" in trigger
    table = to_postgres("CREATE TABLE x (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL)")
    assert table == (
        "CREATE TABLE x (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " at DOUBLE PRECISION)"
    )


def test_the_signing_key_lives_in_the_database_and_keeps_old_links_valid(
    store: Store, tmp_path: Path, database_url: str | None
) -> None:
    old_root = tmp_path / "old-vault"
    old = Vault.open(old_root)  # a data dir from before: its key is vault/signing.key
    link = old.sign("keep/ab/x.png", 2_000_000_000)
    upgraded = Vault.open(old_root, store.signing_key)
    assert upgraded.verify("keep/ab/x.png", 2_000_000_000, link)
    other = Store(database_url or tmp_path / "darkroom.sqlite3")  # another node
    try:
        elsewhere = Vault.open(tmp_path / "other-vault", other.signing_key)
        assert elsewhere.verify("keep/ab/x.png", 2_000_000_000, link)
        assert not (tmp_path / "other-vault" / "signing.key").exists()
    finally:
        other.close()


def test_inputs_of_generations_stored_before_the_inputs_table_are_named(
    tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database from before generation_inputs: its img2img generations' inputs are read
    from their requests when it migrates, so the orphan sweep and deletions keep them."""
    import server.store.migrations as migrations

    target = database_url or tmp_path / "old.sqlite3"
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:-1])
    old = Store(target)
    inputs = {
        "init_image": {"name": "inputs/ab/ab1.png", "sha256": "ab1", "width": 8, "height": 8},
        "mask": {"name": "inputs/cd/cd2.png", "sha256": "cd2", "width": 8, "height": 8},
    }
    with_mask = insert(old, "r1")
    init_only = insert(old, "r2")
    text_only = insert(old, "r3")
    jobs = ((with_mask, inputs), (init_only, {"init_image": inputs["init_image"]}))
    for generation_id, job in jobs:
        with old.transaction() as db:
            db.execute(
                "UPDATE generations SET request_json = ? WHERE id = ?",
                (json.dumps({"image_job": {"inputs": job}}), generation_id),
            )
    old.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    new = Store(target)
    try:
        rows = new.fetch_all("SELECT generation_id, name FROM generation_inputs ORDER BY 1, 2")
        assert [(r["generation_id"], r["name"]) for r in rows] == [
            (with_mask, "inputs/ab/ab1.png"),
            (with_mask, "inputs/cd/cd2.png"),
            (init_only, "inputs/ab/ab1.png"),
        ]
        assert text_only not in {r["generation_id"] for r in rows}
        assert new.named_inputs(["inputs/ab/ab1.png", "inputs/zz/none.png"]) == {
            "inputs/ab/ab1.png"
        }
    finally:
        new.close()


def test_deleting_a_generation_releases_inputs_no_other_names(store: Store) -> None:
    job = {"image_job": {"inputs": {"init_image": {"name": "inputs/ab/shared.png"}}}}
    request = {"settings": {"width": 256, "height": 256}, **job}
    first, second = (
        store.insert_generation(rid, "p", request, 1, True, 0.1, 1, 0.0) for rid in ("a", "b")
    )
    for generation_id in (first, second):
        store.fail(generation_id, {"code": "CANCELLED", "message": "x"})
    assert store.delete_generation(first) == ([], [])  # the second still names it
    assert store.named_inputs(["inputs/ab/shared.png"]) == {"inputs/ab/shared.png"}
    assert store.delete_generation(second) == ([], ["inputs/ab/shared.png"])
    assert store.named_inputs(["inputs/ab/shared.png"]) == set()
