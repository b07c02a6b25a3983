"""What is on disk and offered: the routes of the LoRA and model libraries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from pipelines.samplers import SAMPLER_NAMES
from server.api import views
from server.api.common import links_for, user_of
from server.api.offload import off_loop
from server.contract import not_found, parse
from server.jobs import infotext
from server.library.loras import LoraQuery
from server.state import state_of


async def loras_available(request: Request) -> Response:
    await user_of(request)
    query = parse(LoraQuery, dict(request.query_params))
    links = links_for(request)
    rows = await off_loop(state_of(request).catalog.available, query)
    return JSONResponse([views.lora_model(row, links) for row in rows])


async def refresh_loras(request: Request) -> Response:
    await user_of(request)
    # Hashing new files and checking them against the model takes a while: not on the loop.
    summary = await off_loop(state_of(request).catalog.refresh)
    return JSONResponse(summary.as_json())


async def lora_thumbnail(request: Request) -> Response:
    lora_id = request.path_params["lora_id"]
    path = await off_loop(state_of(request).catalog.preview_path, lora_id)
    if path is None:
        raise not_found("Thumbnail of LoRA", lora_id)
    return FileResponse(path)


class ModelQuery(BaseModel):
    """Filters of GET /models (query strings, so parsed leniently)."""

    model_config = ConfigDict(extra="ignore")

    include_incompatible: bool = False


async def models_available(request: Request) -> Response:
    await user_of(request)
    query = parse(ModelQuery, dict(request.query_params))
    state = state_of(request)
    loaded = state.devices.loaded_models()
    entries = await off_loop(state.models.entries, include_incompatible=query.include_incompatible)
    return JSONResponse([views.model_entry(entry, loaded) for entry in entries])


async def refresh_models(request: Request) -> Response:
    await user_of(request)
    # Hashing a new checkpoint reads all of it (once; then it is cached): not on the loop.
    summary = await off_loop(state_of(request).models.refresh)
    return JSONResponse(summary.as_json())


async def samplers(request: Request) -> Response:
    """Every sampler `settings.sampler` takes, by Darkroom's name, with how AUTOMATIC1111
    names its sampler and schedule (the console's two menus)."""
    await user_of(request)
    items = []
    for name in SAMPLER_NAMES:
        sampler, schedule = infotext.display_sampler(name)
        items.append({"id": name, "sampler": sampler, "schedule": schedule or "Automatic"})
    return JSONResponse({"samplers": items})
