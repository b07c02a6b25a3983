"""AUTOMATIC1111's error shapes: request validation is FastAPI's 422
`{"detail": [{"loc", "msg", "type"}]}`; everything else `{error, detail, body, errors}`
(modules/api/api.py's api_error_handler) with the error's status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import BodyProblem, parse_json, read_body
from server.api.common import user_of
from server.contract import ApiError, ErrorCode
from server.state import state_of
from server.store.accounts import User

# Darkroom's contract fields, as the A1111 request names them.
FIELD_NAMES = {
    "settings.steps": "steps",
    "settings.cfg_scale": "cfg_scale",
    "settings.width": "width",
    "settings.height": "height",
    "settings.seed": "seed",
    "settings.negative_prompt": "negative_prompt",
    "settings.sampler": "sampler_name",
    "options.num_images": "batch_size",
    "loras": "prompt",
}


def a1111_field(name: str) -> str:
    return FIELD_NAMES.get(name) or ("prompt" if name.startswith("loras") else name)


class Invalid(Exception):
    """A 422 in FastAPI's shape: `errors` are (field, message) pairs."""

    def __init__(
        self, *errors: tuple[str, str], kind: str = "value_error", where: str = "body"
    ) -> None:
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in errors))
        self.errors = errors
        self.kind = kind
        self.where = where  # FastAPI's first `loc` item: body, header, query

    def response(self) -> Response:
        where = self.where
        detail = [
            {"loc": [where, *field.split(".")] if field else [where], "msg": msg,
             "type": self.kind}
            for field, msg in self.errors
        ]  # fmt: skip
        return JSONResponse({"detail": detail}, status_code=422)


def from_validation(exc: ValidationError) -> Invalid:
    return Invalid(
        *(
            (".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors(include_url=False)
        )
    )


def a1111_error(status: int, error: str, detail: str, headers: dict | None = None) -> Response:
    body = {"error": error, "detail": detail, "body": "", "errors": ""}
    return JSONResponse(body, status_code=status, headers=headers)


def from_api_error(exc: ApiError) -> Response:
    """Darkroom's errors (limits, credits, auth, LoRAs) in A1111's shapes."""
    details = exc.details if isinstance(exc.details, dict) else {}
    if exc.code == ErrorCode.VALIDATION_ERROR and details.get("in") == "header":
        # A header's error (Idempotency-Key) is FastAPI's 422, whatever the contract says.
        fields = details.get("fields") or {}
        return Invalid(*fields.items(), where="header").response()
    if exc.code in (ErrorCode.VALIDATION_ERROR, ErrorCode.INVALID_LORA) and exc.http_status == 400:
        fields = (exc.details or {}).get("fields") if isinstance(exc.details, dict) else None
        if fields:
            return Invalid(*((a1111_field(k), v) for k, v in fields.items())).response()
        field = "prompt" if exc.code == ErrorCode.INVALID_LORA else ""
        return Invalid((field, exc.message)).response()
    if exc.code == ErrorCode.LIMIT_EXCEEDED and exc.http_status == 400:
        field = str((exc.details or {}).get("field", ""))
        return Invalid((a1111_field(field), exc.message)).response()
    return a1111_error(exc.http_status, exc.code, exc.message, exc.headers)


Handler = Callable[[Request], Awaitable[Response]]


def a1111_route(handler: Handler) -> Handler:
    """Render Darkroom's and validation errors in A1111's shapes."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Invalid as exc:
            return exc.response()
        except ApiError as exc:
            return from_api_error(exc)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


async def caller(request: Request) -> User:
    """Who the request acts as: Bearer, or HTTP Basic with the token as password (the
    scheme a 401 asks for)."""
    return await user_of(request, "Basic")


async def json_body(request: Request, limit: int | None = None) -> Any:
    """The JSON body (any JSON value; an empty body is `{}`), within `limit` bytes."""
    try:
        raw = await read_body(request, limit or state_of(request).settings.max_body_bytes)
        return parse_json(raw) if raw.strip() else {}
    except BodyProblem as problem:
        if problem.status == 413:
            raise ApiError(ErrorCode.LIMIT_EXCEEDED, problem.message, {}, 413) from None
        field = "" if problem.field == "body" else problem.field
        raise Invalid((field, problem.message), kind=problem.kind) from None


async def json_object(request: Request, limit: int | None = None) -> dict[str, Any]:
    data = await json_body(request, limit)
    if not isinstance(data, dict):
        raise Invalid(("", "Input should be a valid dictionary"), kind="dict_type")
    return data
