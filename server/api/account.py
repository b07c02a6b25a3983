"""A user's own things: presets and the account (credits, limits)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api import views
from server.api.common import json_body, user_of
from server.api.offload import off_loop
from server.contract import MAX_IMAGES, SavePresetRequest, check_lengths, check_limits, parse
from server.jobs.limits import UserLimits
from server.jobs.specs import resolve_request
from server.state import state_of


async def save_preset(request: Request) -> Response:
    state = state_of(request)
    user = await user_of(request)
    body = parse(SavePresetRequest, await json_body(request))
    check_limits(body.loras, 1, state.settings.max_loras)
    check_lengths("", body.settings.negative_prompt, state.settings.max_prompt_chars)
    model, _ = await off_loop(resolve_request, state.models, state.catalog, body)
    settings = body.settings.model_dump(mode="json", exclude_unset=True)
    if body.settings.model is not None:
        settings["model"] = model.title  # as GET /models lists it, whichever way it was named
    row, created = await off_loop(
        state.store.save_preset,
        user.id,
        body.name,
        settings,
        [lora.model_dump(mode="json") for lora in body.loras],
        body.tags,
    )
    return JSONResponse(views.preset(row), status_code=201 if created else 200)


async def list_presets(request: Request) -> Response:
    user = await user_of(request)
    rows = await off_loop(state_of(request).store.presets, user.id)
    return JSONResponse([views.preset(row) for row in rows])


async def account(request: Request) -> Response:
    """Who the token belongs to, their credits and limits."""
    state, user = state_of(request), await user_of(request)
    limits = UserLimits.of(user, state.settings)

    def read() -> tuple[int, dict, str]:
        with state.store.reading() as db:
            active = state.store.active_count(db, user.id)
        balance = state.accounts.balance(user.id).as_json()
        return active, balance, state.store.webhook_secret(user.id)

    active, balance, secret = await off_loop(read)
    return JSONResponse(
        {
            "user": user.name,
            "open_mode": user.builtin,
            "admin": user.admin,
            "credits": balance,
            "active_generations": active,
            "webhook_secret": secret,
            "limits": {
                "concurrent_generations": limits.max_active,
                "polls_per_second": limits.poll_rate,
                "images_per_request": MAX_IMAGES,
                "loras_per_request": state.settings.max_loras,
                "prompt_characters": state.settings.max_prompt_chars,
                "body_bytes": state.settings.max_body_bytes,
            },
        }
    )
