"""What the contract's handlers share: who the request is from, its JSON body, the
generation it names, and the URLs a response hands out."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from server.api import views
from server.api.body import BodyProblem, parse_json, read_body, too_large
from server.api.image_input import body_limit
from server.api.offload import off_loop
from server.contract import CONTRACT_PREFIX, ApiError, ErrorCode, not_found
from server.jobs.limits import UserLimits, retry_after
from server.state import state_of
from server.store.accounts import User

_bases: dict[tuple[Any, ...], str] = {}


def request_base(request: Request) -> str:
    """The URL the server was reached at, as Starlette's base_url reads it; cached, since
    every poll needs it and Starlette builds it by parsing the whole URL each time."""
    scope = request.scope
    host = request.headers.get("host")
    server = scope.get("server")
    key = (scope["scheme"], tuple(server) if server else None, scope.get("root_path"), host)
    base = _bases.get(key)
    if base is None:
        if len(_bases) >= 64:  # the Host header is the client's: keep the cache small
            _bases.clear()
        base = _bases[key] = str(request.base_url).rstrip("/")
    return base


def links_for(request: Request) -> views.Links:
    state = state_of(request)
    base = (state.settings.public_url or request_base(request)).rstrip("/")
    if request.scope["path"].startswith(CONTRACT_PREFIX + "/"):
        base += CONTRACT_PREFIX
    return views.Links(base, state.vault, state.settings.url_ttl_hours * 3600)


async def user_of(request: Request, scheme: str = "Bearer") -> User:
    """Who the request acts as (raises 401 UNAUTHORIZED, or 403 where open mode refuses
    its Host); `scheme` is the challenge a 401 carries. The token is looked up off the
    loop."""
    return await off_loop(state_of(request).auth.user, request.headers, scheme)


def check_poll_rate(request: Request, user: User) -> None:
    """Refuse a status poll beyond the user's poll rate (429 with Retry-After)."""
    state = state_of(request)
    limits = UserLimits.of(user, state.settings)
    wait = state.polls.wait(user.id, request.path_params["request_id"], limits)
    if wait > 0:
        rate = limits.poll_rate
        raise ApiError(
            ErrorCode.LIMIT_EXCEEDED,
            f"Polling too fast: at most {rate:g} status request(s) per second per generation",
            {"field": "polling", "limit_per_second": rate, "retry_after_seconds": round(wait, 2)},
            429,
            {"Retry-After": retry_after(wait)},
        )


async def json_body(request: Request, images: tuple[str, ...] = ()) -> dict:
    """The body's JSON object, within --max-body-bytes; errors in the contract's shape.
    `images`: top-level fields that may hold a base64 image each; the body may be larger by
    their room (image_input.body_limit), but what is left without them is held to the
    limit."""
    settings = state_of(request).settings
    try:
        raw = await read_body(request, body_limit(settings, len(images)))
        data = parse_json(raw)
        if isinstance(data, dict) and images:
            rest = len(raw) - sum(len(v) for k in images if isinstance(v := data.get(k), str))
            if rest > settings.max_body_bytes:
                raise too_large(settings.max_body_bytes)
    except BodyProblem as problem:
        raise body_error(problem) from None
    if not isinstance(data, dict):
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "Request body must be a JSON object",
            {"fields": {"body": f"expected an object, got {type(data).__name__}"}},
        )
    return data


def body_error(problem: BodyProblem) -> ApiError:
    if problem.status == 413:
        return ApiError(
            ErrorCode.LIMIT_EXCEEDED,
            problem.message,
            {"field": "body", "limit_bytes": problem.limit},
            413,
        )
    return ApiError(
        ErrorCode.VALIDATION_ERROR, problem.message, {"fields": {problem.field: problem.message}}
    )


def own_generation(request: Request, user: User) -> dict:
    """The generation named in the path, if it is the user's: others' are as unknown.
    It and generation_view query the database: handlers call them through off_loop."""
    request_id = request.path_params["request_id"]
    row = state_of(request).store.generation(request_id, user.id)
    if row is None:
        raise not_found("Generation", request_id)
    return row


def generation_view(request: Request, row: dict) -> dict:
    state = state_of(request)
    # Only a completed generation has images: polls of queued or running ones skip the query.
    images = state.store.images_of([row["id"]])[row["id"]] if row["status"] == "completed" else []
    return views.generation(row, images, links_for(request), state.queue, state.admission)
