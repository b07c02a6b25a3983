"""One map from exception to error response: every error a client sees has the contract's
shape `{"status": "failed", "error": {code, message, details}}` (AUTOMATIC1111's under
/sdapi/, as its api_error_handler answers every exception there), never a traceback."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.a1111.errors import from_api_error
from server.contract import ApiError, ErrorCode

log = logging.getLogger("darkroom")


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if request.url.path.startswith("/sdapi/"):
        return from_api_error(exc)
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {
        401: ErrorCode.UNAUTHORIZED,
        404: ErrorCode.NOT_FOUND,
        405: ErrorCode.METHOD_NOT_ALLOWED,
    }.get(
        exc.status_code, ErrorCode.VALIDATION_ERROR
    )
    error = ApiError(
        code, str(exc.detail), {"path": request.url.path}, exc.status_code, dict(exc.headers or {})
    )
    return await api_error(request, error)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = ApiError(ErrorCode.INTERNAL_ERROR, "Internal server error", {}, 500)
    return await api_error(request, error)


EXCEPTION_HANDLERS = {ApiError: api_error, HTTPException: http_error, Exception: internal_error}
