"""The operator's routes (/admin/...), for administrators only (`darkroom users add NAME
--admin`; the open-mode local user is one): every user's queue, users and their credits
and tokens, and the last hour's activity. Others get 403 FORBIDDEN."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.common import generation_view, json_body, user_of
from server.api.offload import off_loop
from server.contract import ApiError, ErrorCode, not_found, parse
from server.state import AppState, state_of
from server.store.accounts import AccountError, User


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64)
    credits: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)
    admin: bool = False


class CreditGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: float = Field(ge=-1e12, le=1e12, allow_inf_nan=False)


async def admin_of(request: Request) -> tuple[AppState, User]:
    state, user = state_of(request), await user_of(request)
    if not user.admin:
        raise ApiError(
            ErrorCode.FORBIDDEN,
            "Only administrators may do this (darkroom users set NAME --admin)",
            {"user": user.name},
            403,
        )
    return state, user


def _account_error(exc: AccountError) -> ApiError:
    message = str(exc)
    status = 404 if message.startswith("no user") else 400
    code = ErrorCode.NOT_FOUND if status == 404 else ErrorCode.VALIDATION_ERROR
    return ApiError(code, message, {"fields": {"name": message}} if status == 400 else {}, status)


async def queue(request: Request) -> Response:
    """Every user's pending and processing generations, oldest first."""
    state, _ = await admin_of(request)
    rows = await off_loop(state.store.active_generations)

    def views() -> list[dict[str, Any]]:
        items = []
        for row in rows:
            full = state.store.generation_by_id(row["id"])
            if full is not None:
                items.append({**generation_view(request, full), "user": row["user_name"],
                              "prompt": row["prompt"], "node": row["node_id"]})  # fmt: skip
        return items

    return JSONResponse({"items": await off_loop(views)})


async def cancel_any(request: Request) -> Response:
    state, _ = await admin_of(request)
    row = await off_loop(state.store.generation, request.path_params["request_id"])
    if row is None:
        raise not_found("Generation", request.path_params["request_id"])
    cancelled = await off_loop(state.cancel, row["id"])
    return JSONResponse({"request_id": row["request_id"], "cancelled": cancelled})


def _user_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "admin": bool(row.get("admin")),
        "builtin": bool(row["builtin"]),
        "credits": row["credits"],
        "charged": row["charged"],
        "tokens": row["tokens"],
        "generations": row["generations"],
        "active": row["active"],
    }


async def users(request: Request) -> Response:
    state, _ = await admin_of(request)
    rows = await off_loop(state.accounts.summaries)
    return JSONResponse({"items": [_user_view(row) for row in rows]})


async def add_user(request: Request) -> Response:
    """A new user and their first token, shown once."""
    state, _ = await admin_of(request)
    body = parse(NewUser, await json_body(request))
    try:
        user, token = await off_loop(
            state.accounts.add_user, body.name, body.credits, admin=body.admin
        )
    except AccountError as exc:
        raise _account_error(exc) from None
    return JSONResponse({"name": user.name, "admin": user.admin, "token": token}, 201)


async def add_credits(request: Request) -> Response:
    state, _ = await admin_of(request)
    body = parse(CreditGrant, await json_body(request))
    try:
        balance = await off_loop(
            state.accounts.add_credits, request.path_params["name"], body.amount
        )
    except AccountError as exc:
        raise _account_error(exc) from None
    return JSONResponse({"name": request.path_params["name"], "credits": balance.as_json()})


async def revoke_tokens(request: Request) -> Response:
    state, _ = await admin_of(request)
    try:
        revoked = await off_loop(state.accounts.revoke, request.path_params["name"])
    except AccountError as exc:
        raise _account_error(exc) from None
    return JSONResponse({"name": request.path_params["name"], "revoked": revoked})


async def activity(request: Request) -> Response:
    """Images per minute and queue depth over the last hour; render seconds per image by
    device and model."""
    state, _ = await admin_of(request)
    return JSONResponse(await off_loop(state.store.activity))
