"""Reading a request's body, for both APIs: a bounded streaming read and a JSON parse that
refuses what would hurt the server (nesting deeper than MAX_DEPTH, which json.loads and
pydantic follow by recursion) or the database (NUL characters, which PostgreSQL's text
cannot hold). Each API renders a BodyProblem in its own error shape."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request

MAX_DEPTH = 64
# A JSON string (escapes included) or a bracket: strings are skipped whole, so brackets
# inside them do not count.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class BodyProblem(Exception):
    """A body that cannot be used. `field` is where (a dotted path; "body" the whole of
    it), `kind` the problem's FastAPI-style type, `status` 413 for a body over `limit`."""

    def __init__(
        self, message: str, field: str, kind: str, status: int = 400, limit: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.kind = kind
        self.status = status
        self.limit = limit


def too_large(limit: int) -> BodyProblem:
    return BodyProblem(
        f"Request body is larger than {limit} bytes", "body", "too_large", 413, limit
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes (a declared or streamed larger one: 413), read in
    chunks joined once."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than `limit`, found without
    parsing it (bodies with few brackets, like png-info's base64 image, skip the scan)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def nul_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding a NUL character, else None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return where
        found = nul_field(item, where)
        if found is not None:
            return found
    return None


def parse_json(raw: bytes) -> Any:
    """The JSON value of `raw`, or a BodyProblem saying why not."""
    if too_deep(raw):
        raise BodyProblem(
            f"JSON nested deeper than {MAX_DEPTH} levels", "body", "json_too_deep"
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        message = f"Request body is not valid JSON: {exc}"
        raise BodyProblem(message, "body", "json_invalid") from None
    where = nul_field(data)
    if where is not None:
        raise BodyProblem(
            f"{where or 'body'}: must not contain NUL (\\u0000) characters",
            where or "body",
            "string_nul",
        )
    return data
