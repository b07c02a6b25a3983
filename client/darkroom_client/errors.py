"""One exception per error code of the contract (and of Darkroom's additions)."""

from __future__ import annotations

from typing import Any


class DarkroomError(Exception):
    """An error answered by the server, or a generation that ended `failed`.

    `code` is the contract's error code, `message` its human text, `details` whatever the
    server added (`invalid_ids`, `fields`, ...), `status_code` the HTTP status (None for a
    generation that failed after it was accepted), `headers` the response's headers."""

    code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        status_code: int | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details if details is not None else {}
        self.status_code = status_code
        self.request_id = request_id
        self.headers = headers or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidLora(DarkroomError):
    code = "INVALID_LORA"


class LimitExceeded(DarkroomError):
    code = "LIMIT_EXCEEDED"


class ProviderError(DarkroomError):
    code = "PROVIDER_ERROR"


class QuotaExceeded(DarkroomError):
    code = "QUOTA_EXCEEDED"


class ValidationError(DarkroomError):
    code = "VALIDATION_ERROR"

    @property
    def fields(self) -> dict[str, str]:
        """Each bad field and why, as the server names them: `{"settings.steps": "..."}`."""
        fields = self.details.get("fields") if isinstance(self.details, dict) else None
        return dict(fields) if isinstance(fields, dict) else {}


class Unauthorized(DarkroomError):
    code = "UNAUTHORIZED"


class NotFound(DarkroomError):
    code = "NOT_FOUND"


class MethodNotAllowed(DarkroomError):
    code = "METHOD_NOT_ALLOWED"


class ServiceUnavailable(DarkroomError):
    code = "SERVICE_UNAVAILABLE"


class Conflict(DarkroomError):
    """409: a request with the same Idempotency-Key is still in progress."""

    code = "CONFLICT"


class Cancelled(DarkroomError):
    code = "CANCELLED"


class Timeout(DarkroomError):
    code = "TIMEOUT"


class Expired(DarkroomError):
    code = "EXPIRED"


class InternalError(DarkroomError):
    code = "INTERNAL_ERROR"


class TransportError(DarkroomError):
    """The server could not be reached, or answered something that is not the contract."""

    code = "TRANSPORT_ERROR"


ERRORS: dict[str, type[DarkroomError]] = {
    cls.code: cls
    for cls in (
        InvalidLora,
        LimitExceeded,
        ProviderError,
        QuotaExceeded,
        ValidationError,
        Unauthorized,
        NotFound,
        MethodNotAllowed,
        ServiceUnavailable,
        Conflict,
        Cancelled,
        Timeout,
        Expired,
        InternalError,
        TransportError,
    )
}


def error_from(
    error: Any,
    status_code: int | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> DarkroomError:
    """The exception for a contract error object `{"code", "message", "details"}`."""
    if not isinstance(error, dict):
        error = {"code": "UNKNOWN", "message": str(error)}
    code = str(error.get("code") or "UNKNOWN")
    cls = ERRORS.get(code, DarkroomError)
    return cls(
        str(error.get("message") or code),
        code=code,
        details=error.get("details"),
        status_code=status_code,
        request_id=request_id,
        headers=headers,
    )
