"""An image-to-image's input files (init image, mask) by the generations that name them,
so a deleted generation's inputs that no other generation uses leave the vault with it.
The files are content-addressed (server/store/vault.py: save_input): one file may be the
input of many generations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.store.database import Connection, Database


def input_names(request: dict[str, Any]) -> list[str]:
    """The vault names of a stored request's input images (server/jobs/image_jobs.py)."""
    inputs = (request.get("image_job") or {}).get("inputs") or {}
    return sorted({entry["name"] for entry in inputs.values()})


def record_inputs(db: Connection, generation_id: int, names: Iterable[str]) -> None:
    for name in names:
        db.execute(
            "INSERT INTO generation_inputs (generation_id, name) VALUES (?, ?)"
            " ON CONFLICT (generation_id, name) DO NOTHING",
            (generation_id, name),
        )


def release_inputs(db: Connection, generation_id: int) -> list[str]:
    """Forget a generation's inputs; those no other generation names (files to remove)."""
    names = [
        row[0]
        for row in db.execute(
            "SELECT name FROM generation_inputs WHERE generation_id = ?", (generation_id,)
        ).fetchall()
    ]
    db.execute("DELETE FROM generation_inputs WHERE generation_id = ?", (generation_id,))
    return [name for name in names if not _named(db, [name])]


def _named(db: Connection, names: list[str]) -> set[str]:
    if not names:
        return set()
    marks = ",".join("?" * len(names))
    rows = db.execute(
        f"SELECT DISTINCT name FROM generation_inputs WHERE name IN ({marks})", names
    ).fetchall()
    return {row[0] for row in rows}


class InputQueries(Database):
    def named_inputs(self, names: list[str]) -> set[str]:
        """Which of `names` some generation names as an input."""
        with self.reading() as db:
            return _named(db, names)
