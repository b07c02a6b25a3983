"""POST /v1/images/generations: an ordinary Darkroom generation (the fair queue, the
active limit, credits, history, vault, webhooks) that the call waits for, answered as
OpenAI's Images API answers: `{created, data: [{url | b64_json, revised_prompt}], size,
quality, output_format, background, usage}`; with `stream: true`, as Server-Sent Events
(server/api/openai/streaming.py)."""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.a1111.errors import Invalid
from server.api.a1111.prompts import parse_tags
from server.api.blocking import CallerGone, wait_for
from server.api.common import json_body, links_for, user_of
from server.api.idempotency import Keyed, idempotent
from server.api.offload import off_loop
from server.api.openai.answers import answer, failed, image_data
from server.api.openai.errors import OpenAIError, invalid, openai_route
from server.api.openai.params import MAX_N, ImageParams, is_openai_model, read_params
from server.api.openai.streaming import stream_images
from server.contract import EMPTY_PROMPT, ApiError, ImageGenerationRequest, parse
from server.state import AppState, state_of
from server.store.accounts import User


@openai_route
async def generations(request: Request) -> Response:
    state, user = state_of(request), await user_of(request)
    payload = await json_body(request)
    params = read_params(payload)
    return await render(request, state, user, params, "v1/images/generations", payload)


async def render(
    request: Request,
    state: AppState,
    user: User,
    params: ImageParams,
    route: str,
    payload: Any,
    image_job: dict[str, Any] | None = None,
) -> Response:
    """Submit the generation the parameters describe (once per Idempotency-Key) and
    answer with its images."""
    if state.draining:
        raise OpenAIError(503, "The server is shutting down; try again shortly", None,
                          "service_unavailable", "server_error")  # fmt: skip
    generation, text = await darkroom_request(state, params, empty_prompt=image_job is not None)
    if state.providers is not None:  # a remote's LoRA list, fetched off the event loop
        await off_loop(state.providers.prefetch, generation)
    kept = {"user": params.user, "size": params.size, "quality": params.quality}

    async def work(keyed: Keyed | None) -> Response:
        submit = functools.partial(
            state.admission.submit, generation, user, {"openai": kept},
            webhook_base=links_for(request).base, bind=keyed.bind if keyed else None,
            max_images=MAX_N, blocking=True,
        )  # fmt: skip
        if image_job is not None:
            submit = functools.partial(submit, image_job=image_job)
        return await respond(request, state, await off_loop(submit), params, text)

    async def replay(row: dict[str, Any], first: object) -> Response:
        return await respond(request, state, row, params, text)

    return await idempotent(request, user, route, payload, work, replay, record=False)


async def respond(
    request: Request, state: AppState, row: dict[str, Any], params: ImageParams, text: str
) -> Response:
    """The answer for a generation: its images once it has ended, or its event stream."""
    request.state.request_id = row["request_id"]
    if params.stream:
        return stream_images(request, state, row, params, text)
    try:
        row = await wait_for(request, state, row["id"])
    except CallerGone:
        return Response(status_code=499)  # nobody reads it: the generation was cancelled
    failure = failed(row)
    if failure is not None:
        raise failure
    data = await off_loop(image_data, request, state, row, params, text)
    return JSONResponse(answer(params, data, text))


async def darkroom_request(
    state: AppState, params: ImageParams, empty_prompt: bool = False
) -> tuple[ImageGenerationRequest, str]:
    """The contract's request for OpenAI's parameters, and the prompt text it encodes
    (LoRA tags taken out): OpenAI's `revised_prompt`."""
    try:
        tags = await off_loop(parse_tags, params.prompt, state.catalog)
    except Invalid as exc:
        raise invalid("prompt", "; ".join(message for _, message in exc.errors)) from None
    extra = params.extra
    sampler = extra.get("sampler", "euler")
    if "scheduler" in extra:
        sampler = _with_schedule(str(sampler), str(extra["scheduler"]))
    loras = extra.get("loras", [])
    if not isinstance(loras, list):
        raise invalid("loras", "'loras' must be a list of {id, weight} objects")
    loras = [*loras, *({"id": m.lora_id, "weight": m.weight} for m in tags.loras)]
    body = {
        "prompt": tags.text,
        "settings": {
            "cfg_scale": extra.get("cfg_scale"),
            "steps": params.steps,
            "sampler": sampler,
            "seed": extra.get("seed"),
            "width": params.width,
            "height": params.height,
            "negative_prompt": extra.get("negative_prompt"),
            "model": model_setting(state, params.model),
        },
        "loras": loras,
        "options": {
            "num_images": params.n,
            "format": params.output_format,
            "quality": params.output_compression,
            "provider": extra.get("provider"),
        },
    }
    context = EMPTY_PROMPT if empty_prompt else None
    return parse(ImageGenerationRequest, body, context), tags.text


def model_setting(state: AppState, model: str | None) -> str | None:
    """`settings.model` for OpenAI's `model`: OpenAI's own names mean the default model;
    a title, name or hash from GET /v1/models names that model; anything else is a 404."""
    if model is None or is_openai_model(model):
        return None
    try:
        entry = state.models.resolve(model)
    except ApiError:
        raise OpenAIError(
            404, f"The model '{model}' does not exist", "model", "model_not_found"
        ) from None
    return None if entry.default else entry.title


def _with_schedule(sampler: str, scheduler: str) -> str:
    from pipelines.samplers import UnsupportedSampler, resolve

    try:
        return resolve(sampler, scheduler)
    except UnsupportedSampler as exc:
        raise invalid("scheduler", str(exc)) from None
