"""`darkroom batch FILE.jsonl`: one generation per line, as many at once as the account
allows, a manifest of results, resumable after an interruption."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from darkroom_client.bodies import SETTING_KWARGS, build_request
from darkroom_client.client import Client
from darkroom_client.commands import (
    LoraNames,
    allowed_at_once,
    fixed_seed,
    resolve_loras,
    save_generation,
)
from darkroom_client.errors import DarkroomError, NotFound, ValidationError
from darkroom_client.models import Generation


class Manifest:
    """DIR/manifest.jsonl: one JSON object per event (submitted, then completed or
    failed), appended and fsynced, so a killed run leaves at worst a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def latest(self) -> dict[int, dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            for text in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(text)
                except ValueError:
                    continue  # a line torn by a kill
                if isinstance(record, dict) and isinstance(record.get("line"), int):
                    records[record["line"]] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size:
                with self.path.open("rb") as file:
                    file.seek(-1, os.SEEK_END)
                    if file.read(1) != b"\n":
                        data = b"\n" + data  # start after a torn line
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)


def batch_body(entry: Any, names: LoraNames) -> dict[str, Any]:
    """A batch line as a request body: the contract's shape, or flat settings."""
    if not isinstance(entry, dict):
        raise ValidationError("a line must be a JSON object")
    if "settings" in entry or "options" in entry:
        body = json.loads(json.dumps(entry))
        if body.get("loras"):
            body["loras"] = resolve_loras(names, body["loras"])
        return build_request(request=body)
    flat = dict(entry)
    prompt = flat.pop("prompt", None)
    if "loras" in flat and flat["loras"]:
        flat["loras"] = resolve_loras(names, flat["loras"])
    unknown = set(flat) - SETTING_KWARGS
    if unknown:
        raise ValidationError(
            f"unknown field(s) {', '.join(sorted(unknown))}",
            details={"fields": {name: "unknown" for name in sorted(unknown)}},
        )
    return build_request(prompt, **flat)


def cmd_batch(args: argparse.Namespace, client: Client) -> int:
    from tqdm import tqdm

    out: Path = args.out
    manifest = Manifest(out / "manifest.jsonl")
    done = manifest.latest()
    names = LoraNames(client)
    lines = args.file.read_text(encoding="utf-8").splitlines()
    todo: list[tuple[int, str]] = []
    finished = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        record = done.get(number)
        if (
            record
            and record.get("status") == "completed"
            and all((out / name).exists() for name in record.get("files") or [])
        ):
            finished += 1
            continue
        todo.append((number, text))
    workers = allowed_at_once(client)
    failures = 0
    bar = tqdm(
        total=finished + len(todo),
        initial=finished,
        desc="batch",
        unit="gen",
        disable=args.no_progress,
        file=sys.stderr,
    )

    def one(number: int, text: str) -> dict[str, Any]:
        previous = done.get(number) or {}
        try:
            body = fixed_seed(batch_body(json.loads(text), names))
        except ValueError as exc:
            if not isinstance(exc, DarkroomError):
                exc = ValidationError(f"not JSON: {exc}")
            return _failed(number, None, exc)
        except DarkroomError as exc:
            return _failed(number, None, exc)
        if previous.get("status") == "submitted" and previous.get("request_id"):
            # The last run was stopped while this one was rendering: pick it up.
            try:
                generation = client.wait(previous["request_id"])
                files = save_generation(
                    generation, previous.get("request") or body, out, client.url
                )
                return _completed(number, generation, files)
            except NotFound:
                pass
            except DarkroomError as exc:
                return _failed(number, previous["request_id"], exc)

        def submitted(generation: Generation) -> None:
            manifest.append(
                {
                    "line": number,
                    "request_id": generation.request_id,
                    "status": "submitted",
                    "files": [],
                    "error": None,
                    "request": body,
                }
            )

        try:
            generation = client.generate(request=body, on_submit=submitted)
            return _completed(
                number, generation, save_generation(generation, body, out, client.url)
            )
        except DarkroomError as exc:
            return _failed(number, exc.request_id, exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, number, text) for number, text in todo]
        for future in as_completed(futures):
            record = future.result()
            manifest.append(record)
            if record["status"] != "completed":
                failures += 1
                error = record["error"]
                tqdm.write(
                    f"darkroom: line {record['line']}: {error['code']}: {error['message']}",
                    file=sys.stderr,
                )
            bar.update(1)
    bar.close()
    print(
        f"{finished + len(todo) - failures} completed, {failures} failed; manifest: {manifest.path}"
    )
    return 1 if failures else 0


def _completed(number: int, generation: Generation, files: list[str]) -> dict[str, Any]:
    return {
        "line": number,
        "request_id": generation.request_id,
        "status": "completed",
        "files": files,
        "error": None,
    }


def _failed(number: int, request_id: str | None, exc: DarkroomError) -> dict[str, Any]:
    return {
        "line": number,
        "request_id": request_id,
        "status": "failed",
        "files": [],
        "error": {"code": exc.code, "message": exc.message, "details": exc.details},
    }
