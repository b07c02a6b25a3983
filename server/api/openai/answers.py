"""What OpenAI's image routes answer: the `data` items, the response object, `usage`,
and a failed generation as OpenAI's error."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from starlette.requests import Request

from server.api.common import links_for
from server.api.openai.errors import OpenAIError
from server.api.openai.params import ImageParams
from server.api.views import image_info
from server.contract import ErrorCode
from server.state import AppState

# CLIP's split of a prompt before byte-pair encoding: what `usage` counts as text tokens.
CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.IGNORECASE)
FAILED_STATUS = {ErrorCode.CANCELLED: 409, ErrorCode.PROVIDER_ERROR: 502, ErrorCode.TIMEOUT: 504}


def failed(row: dict[str, Any]) -> OpenAIError | None:
    if row["status"] != "failed":
        return None
    error = json.loads(row["error_json"] or "{}")
    code = error.get("code", ErrorCode.INTERNAL_ERROR)
    status = FAILED_STATUS.get(code, 500)
    kind = "invalid_request_error" if status == 409 else "server_error"
    return OpenAIError(status, error.get("message", "The generation failed"), None,
                       code.lower(), kind)  # fmt: skip


def image_data(
    request: Request, state: AppState, row: dict[str, Any], params: ImageParams, text: str
) -> list[dict[str, Any]]:
    """OpenAI's `data` items: a signed vault link or the file in base64, with the prompt
    that was encoded."""
    links = links_for(request)
    stored = json.loads(row["request_json"])
    items = []
    for image in state.store.images_of([row["id"]])[row["id"]]:
        if params.response_format == "b64_json":
            raw = state.vault.path(image["file_name"]).read_bytes()
            item: dict[str, Any] = {"b64_json": base64.b64encode(raw).decode("ascii")}
        else:
            item = {"url": image_info(image, stored, links).url}
        items.append({**item, "revised_prompt": text})
    return items


def answer(params: ImageParams, data: list[dict[str, Any]], text: str) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": data,
        "size": f"{params.width}x{params.height}",
        "quality": params.quality,
        "output_format": params.output_format,
        "background": "opaque",
        "usage": usage(text),
    }


def usage(text: str, images: int = 0) -> dict[str, Any]:
    """OpenAI's usage object. Darkroom charges credits, not tokens: input tokens are the
    prompt's pieces as CLIP splits them before byte-pair encoding, output tokens 0."""
    tokens = len(CLIP_PIECES.findall(text))
    return {
        "input_tokens": tokens + images,
        "input_tokens_details": {"text_tokens": tokens, "image_tokens": images},
        "output_tokens": 0,
        "total_tokens": tokens + images,
    }

