"""OpenAI's error shape, `{"error": {message, type, param, code}}`, with OpenAI's status
codes, so the `openai` package raises the exception class its users catch:
BadRequestError (400), AuthenticationError (401), NotFoundError (404), RateLimitError
(429: `insufficient_quota` when credits cannot cover a request, `rate_limit_exceeded`
for the active limit), InternalServerError (5xx)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.contract import ApiError, ErrorCode

# Darkroom's contract fields, as OpenAI's request names them.
PARAMS = {
    "prompt": "prompt",
    "settings.width": "size",
    "settings.height": "size",
    "settings.steps": "steps",
    "settings.cfg_scale": "cfg_scale",
    "settings.seed": "seed",
    "settings.sampler": "sampler",
    "settings.negative_prompt": "negative_prompt",
    "settings.model": "model",
    "options.num_images": "n",
    "options.quality": "output_compression",
    "options.format": "output_format",
    "options.provider": "provider",
    "loras": "loras",
    "body": None,
}


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(param: str | None, message: str, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param, code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404, f"The model '{model}' does not exist", "model", "model_not_found"
    )


def from_api_error(exc: ApiError) -> OpenAIError:
    """Darkroom's errors (validation, auth, limits, credits, queue) in OpenAI's terms."""
    details = exc.details if isinstance(exc.details, dict) else {}
    headers = dict(exc.headers)
    if exc.code == ErrorCode.UNAUTHORIZED:
        headers.pop("WWW-Authenticate", None)
        return OpenAIError(401, exc.message, None, "invalid_api_key", headers=headers)
    if exc.code == ErrorCode.QUOTA_EXCEEDED:
        message = f"You exceeded your current quota: {exc.message}"
        return OpenAIError(429, message, None, "insufficient_quota", "insufficient_quota")
    if exc.code == ErrorCode.LIMIT_EXCEEDED and exc.http_status == 429:
        return OpenAIError(
            429, exc.message, None, "rate_limit_exceeded", "requests", headers
        )
    if exc.code == ErrorCode.SERVICE_UNAVAILABLE or exc.http_status == 503:
        return OpenAIError(503, exc.message, None, "service_unavailable", "server_error", headers)
    if exc.code == ErrorCode.NOT_FOUND:
        return OpenAIError(404, exc.message, None, "not_found", headers=headers)
    if exc.http_status >= 500:
        return OpenAIError(exc.http_status, exc.message, None, exc.code.lower(), "server_error")
    fields = details.get("fields") if isinstance(details.get("fields"), dict) else {}
    where = next(iter(fields), None) or details.get("field")
    if exc.code == ErrorCode.INVALID_LORA:
        where = "loras" if where is None else where
    param = _param(str(where)) if where else None
    if param == "model":
        return OpenAIError(404, exc.message, "model", "model_not_found")
    # 403 (open mode from another host), 409 (an Idempotency-Key still in use), 413 and
    # 422 keep their status; the rest of the request's faults are OpenAI's 400.
    status = exc.http_status if exc.http_status in (403, 409, 413, 422) else 400
    return OpenAIError(status, exc.message, param, exc.code.lower(), headers=headers)


def _param(field: str) -> str | None:
    if field in PARAMS:
        return PARAMS[field]
    if field.startswith("loras"):
        return "loras"
    return field.rsplit(".", 1)[-1]


Handler = Callable[[Request], Awaitable[Response]]


def openai_route(handler: Handler) -> Handler:
    """Render Darkroom's errors in OpenAI's shape."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except OpenAIError as exc:
            return exc.response()
        except ApiError as exc:
            return from_api_error(exc).response()

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped
