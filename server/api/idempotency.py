"""The Idempotency-Key header (draft-ietf-httpapi-idempotency-key-header, as Stripe uses
it) for every route that starts a generation: a repeat of a request with the same key and
the same body within 24 h gets the first one's answer and admits nothing (no second job,
hold or charge); the same key with another body is a 422; a repeat while the first is
still being admitted is a 409. Keys are per user and kept in the database.

A route wraps its work in `idempotent()`; the work passes `Keyed.bind` to
`Admission.submit`, which ties the key to the generation in the transaction that admits
it, so no crash or race can admit two generations under one key."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.api.offload import off_loop
from server.contract import ApiError, ErrorCode
from server.state import state_of
from server.store import Store
from server.store.accounts import User
from server.store.database import Connection

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# A claim that admitted nothing for this long belongs to a request that died: taken over.
STALE_CLAIM_SECONDS = 60.0
CONFLICT_RETRY_AFTER = "1"


def key_of(request: Request) -> str | None:
    """The request's key: 1-255 printable ASCII characters, bare (as Stripe sends it) or as
    the draft's structured-field string (in double quotes); None without the header."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise header_error(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters", 400
        )
    return key


def fingerprint(route: str, payload: Any) -> str:
    """What makes two requests the same: the route and the parsed JSON body with its keys
    sorted (so key order and whitespace do not count; values and types do)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest()


def header_error(message: str, status: int) -> ApiError:
    return ApiError(
        ErrorCode.VALIDATION_ERROR, message, {"fields": {HEADER: message}, "in": "header"}, status
    )


def conflict(message: str) -> ApiError:
    return ApiError(
        ErrorCode.CONFLICT,
        message,
        {"field": HEADER, "reason": "in_progress"},
        409,
        {"Retry-After": CONFLICT_RETRY_AFTER},
    )


@dataclass
class Keyed:
    """A request's claim on its key."""

    store: Store
    user_id: int
    key: str
    claim: str
    request_id: str | None = None

    def bind(self, db: Connection, request_id: str) -> None:
        """Admission calls this inside the transaction that records the generation."""
        if not self.store.bind_key(db, self.user_id, self.key, self.claim, request_id):
            raise conflict(f"Another request took over {HEADER} {self.key!r} while this one waited")
        self.request_id = request_id


# The route's work: given the claim (None without a key), the answer.
Work = Callable[[Keyed | None], Awaitable[Response]]
# The answer for a repeat: the generation the key admitted, and the first answer's
# (status, JSON body) if it was recorded (None: the first request is still answering,
# or died before it could).
Replay = Callable[[dict[str, Any], tuple[int, Any] | None], Awaitable[Response]]


async def idempotent(
    request: Request,
    user: User,
    route: str,
    payload: Any,
    work: Work,
    replay: Replay,
    record: bool = True,
) -> Response:
    """Run `work` once per key; `record`: keep the first 2xx answer's body to replay
    verbatim (routes whose answers are large rebuild them in `replay` instead)."""
    key = key_of(request)
    if key is None:
        return await work(None)
    store = state_of(request).store
    digest = fingerprint(route, payload)
    claim = secrets.token_hex(16)
    held = await off_loop(
        store.claim_key, user.id, key, digest, claim, STALE_CLAIM_SECONDS
    )
    if held is not None:
        if held.fingerprint != digest:
            raise header_error(
                f"{HEADER} {key!r} was already used with a different request;"
                " use a new key for a new request",
                422,
            )
        if held.request_id is None:
            raise conflict(f"A request with {HEADER} {key!r} is still being admitted")
        row = await off_loop(store.generation, held.request_id, user.id)
        if row is None:
            raise conflict(f"The generation of {HEADER} {key!r} is not readable yet")
        first = (held.status, held.answer) if held.status is not None else None
        response = await replay(row, first)
        response.headers[REPLAYED_HEADER] = "true"
        return response
    keyed = Keyed(store, user.id, key, claim)
    try:
        response = await work(keyed)
    except BaseException:
        # Admitted nothing, or its transaction rolled back: the key is free again (the
        # release removes only a claim that is bound to nothing).
        await off_loop(store.release_key, user.id, key, claim)
        raise
    if keyed.request_id is None:
        await off_loop(store.release_key, user.id, key, claim)
    if record and keyed.request_id is not None and 200 <= response.status_code < 300:
        body = json.loads(bytes(response.body))
        await off_loop(
            store.record_answer, user.id, key, claim, response.status_code, body
        )
    return response
