"""What a failed job tells its client: safe messages, no tracebacks."""

from __future__ import annotations

from typing import Any

from server.contract import ErrorCode, error_object


class OutOfMemory(Exception):
    """The device ran out of memory, even one image at a time."""


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, torch.OutOfMemoryError (MPS) or a RuntimeError saying so;
    # matched by name so that server/ never imports torch.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def cancelled_error() -> dict:
    return error_object(
        ErrorCode.CANCELLED, "The generation was cancelled", {"reason": "cancelled"}
    )


def caller_gone_error() -> dict:
    """A blocking call (AUTOMATIC1111's txt2img) whose server restarted under it: its caller's
    connection is gone (it will retry), so nothing is rendered or charged for no one."""
    return error_object(
        ErrorCode.CANCELLED,
        "The server restarted while the call waited; its caller's connection is gone",
        {"reason": "caller_gone"},
    )


def timeout_error(limit: float) -> dict:
    return error_object(
        ErrorCode.TIMEOUT,
        f"The generation took longer than {limit:g} s and was stopped",
        {"reason": "timeout", "limit_seconds": limit},
    )


def provider_error(exc: Exception) -> dict:
    """A failure safe to show a client: the exception's kind and first line, no traceback."""
    if isinstance(exc, OutOfMemory):
        return error_object(
            ErrorCode.PROVIDER_ERROR,
            "The GPU ran out of memory",
            {"reason": "out_of_memory", "hint": "Try a smaller width and height or fewer images"},
        )
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return error_object(
        ErrorCode.PROVIDER_ERROR,
        "Image generation failed",
        {"reason": f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__},
    )


def gave_up_error(attempts: int) -> dict[str, Any]:
    return error_object(
        ErrorCode.PROVIDER_ERROR,
        f"The server stopped {attempts} times while rendering this job; gave up",
        {"reason": "crashed", "attempts": attempts},
    )


def model_load_error(model: Any, reason: str) -> dict[str, Any]:
    """A model that would not load (truncated, wrong keys): the job fails, the server and
    every other model carry on."""
    return error_object(
        ErrorCode.PROVIDER_ERROR,
        f"The model {model.title} could not be loaded",
        {"reason": "model_load_failed", "model": model.title, "detail": reason[:200]},
    )
