"""The contract's generation routes: submit, status, events, history, cancel."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api import views
from server.api.common import (
    check_poll_rate,
    generation_view,
    json_body,
    links_for,
    own_generation,
    user_of,
)
from server.api.events import stream_events
from server.api.idempotency import Keyed, idempotent
from server.api.image_generate import read_request
from server.api.offload import off_loop
from server.api.webhooks import check_webhook_url
from server.contract import ApiError, ErrorCode, HistoryQuery, parse
from server.contract_images import IMAGE_FIELDS
from server.state import state_of
from server.store.accounts import User
from server.store.generations import HistoryFilters


async def generate(request: Request) -> Response:
    state = state_of(request)
    user = await user_of(request)
    if state.draining:
        raise ApiError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The server is shutting down; try again shortly",
            {"reason": "draining"},
            503,
            {"Retry-After": str(round(state.settings.drain_timeout))},
        )
    payload = await json_body(request, IMAGE_FIELDS)

    async def admit(keyed: Keyed | None) -> Response:
        read = await read_request(state, payload)
        body = read.request
        await check_webhook_url(request, body)
        if state.providers is not None:  # a remote's LoRA list, fetched off the event loop
            await off_loop(state.providers.prefetch, body)

        def submit() -> dict:  # an image job's inputs go to the vault only when admitting
            return state.admission.submit(
                body,
                user,
                webhook_base=links_for(request).base,
                bind=keyed.bind if keyed else None,
                image_job=read.job(state.vault) if read.job else None,
            )

        row = await off_loop(submit)
        request.state.request_id = row["request_id"]
        return JSONResponse(await off_loop(generation_view, request, row), status_code=202)

    async def replay(row: dict, first: tuple[int, Any] | None) -> Response:
        request.state.request_id = row["request_id"]
        if first is None:  # the first request is answering right now, or died doing so
            return JSONResponse(await off_loop(generation_view, request, row), status_code=202)
        return JSONResponse(first[1], status_code=first[0])

    return await idempotent(request, user, "image/generate", payload, admit, replay)


async def generation_status(request: Request) -> Response:
    user = await user_of(request)
    check_poll_rate(request, user)
    row = await off_loop(own_generation, request, user)
    return JSONResponse(await off_loop(generation_view, request, row))


async def generation_events(request: Request) -> Response:
    row = await off_loop(own_generation, request, await user_of(request))
    return stream_events(request, row["id"], lambda row: generation_view(request, row))


async def history(request: Request) -> Response:
    state = state_of(request)
    user = await user_of(request)
    query = parse(HistoryQuery, dict(request.query_params))
    date_from = parse_date(query.date_from) if query.date_from else None
    filters = HistoryFilters(
        query.q, query.model, query.lora, query.status,
        parse_date(query.date_to, "date_to") if query.date_to else None,
    )  # fmt: skip
    links = links_for(request)

    def page() -> tuple[list[dict], int]:
        rows, total = state.store.history(
            user.id, query.page, query.per_page, date_from, query.has_seed, filters
        )
        images = state.store.images_of([row["id"] for row in rows])
        items = [
            views.history_item(row, images[row["id"]], links, state.queue, state.admission)
            for row in rows
        ]
        return items, total

    items, total = await off_loop(page)
    page_total = -(-total // query.per_page)
    return JSONResponse(
        {
            "items": items,
            "itemsReceived": len(items),
            "curPage": query.page,
            "nextPage": query.page + 1 if query.page < page_total else None,
            "prevPage": query.page - 1 if query.page > 1 else None,
            "offset": (query.page - 1) * query.per_page,
            "perPage": query.per_page,
            "itemsTotal": total,
            "pageTotal": page_total,
        }
    )


def parse_date(text: str, field: str = "date_from") -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"{field}: not an ISO 8601 date: {text!r}",
            {"fields": {field: "expected YYYY-MM-DD or an ISO 8601 date-time"}},
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


async def delete_generation(request: Request) -> Response:
    """DELETE /generations/{id}: an active generation is cancelled (as POST .../cancel);
    an ended one is deleted: its images' files, its inputs no other generation uses, and
    its row (the ledger keeps its charge)."""
    state = state_of(request)
    row = await off_loop(own_generation, request, await user_of(request))
    if row["status"] in ("pending", "processing"):
        return await cancel_generation(request)
    deleted = await off_loop(state.store.delete_generation, row["id"])
    if deleted is None:  # it became active again? (a restart re-queued it): cancel instead
        return await cancel_generation(request)
    files, inputs = deleted
    await off_loop(state.vault.delete, *files)
    await off_loop(state.vault.remove_inputs, inputs, state.store.named_inputs)
    return JSONResponse({"request_id": row["request_id"], "status": "deleted"})


async def cancel_generation(request: Request) -> Response:
    user = await user_of(request)
    return JSONResponse(await off_loop(cancel, request, user))


def cancel(request: Request, user: User) -> dict:
    state, row = state_of(request), own_generation(request, user)
    # A running job stops at its next step (or, in a batch, is dropped when it ends); it is
    # failed now, so the answer is final and nothing it produces is recorded or charged.
    cancelled = state.cancel(row["id"])
    row = state.store.generation_by_id(row["id"])
    body = generation_view(request, row)
    if not cancelled:
        body["message"] = f"Nothing to cancel: the generation is already {row['status']}"
    return body
