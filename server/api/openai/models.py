"""GET /v1/models and /v1/models/{id}: the model library's compatible checkpoints as
OpenAI's model objects (`id` is the checkpoint's title), so `client.models.list()` works."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.common import user_of
from server.api.openai.errors import openai_route
from server.api.openai.images import model_setting
from server.library.checkpoints import ModelEntry
from server.state import state_of

OWNER = "darkroom"


def model_object(entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.title, "object": "model", "created": 0, "owned_by": OWNER}


@openai_route
async def list_models(request: Request) -> Response:
    await user_of(request)
    entries = sorted(state_of(request).models.entries(), key=lambda entry: not entry.default)
    return JSONResponse({"object": "list", "data": [model_object(e) for e in entries]})


@openai_route
async def get_model(request: Request) -> Response:
    """A title, name or hash from the list; OpenAI's own names are the default model."""
    await user_of(request)
    state = state_of(request)
    title = model_setting(state, request.path_params["model"])
    entry = state.models.resolve(title)
    return JSONResponse(model_object(entry))
