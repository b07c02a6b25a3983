"""The contract's generation routes: submit, status, events, history, cancel."""

from __future__ import annotations

from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api import views
from server.api.common import (
    generation_view,
    json_body,
    links_for,
    own_generation,
    user_of,
)
from server.api.events import stream_events
from server.api.offload import off_loop
from server.api.webhooks import check_webhook_url
from server.contract import ApiError, ErrorCode, HistoryQuery, ImageGenerationRequest, parse
from server.jobs.failures import cancelled_error
from server.jobs.limits import retry_after
from server.state import state_of
from server.store.accounts import User


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
    body = parse(ImageGenerationRequest, await json_body(request))
    await check_webhook_url(request, body)
    if state.providers is not None:  # a remote's LoRA list, fetched off the event loop
        await off_loop(state.providers.prefetch, body)
    row = await off_loop(state.admission.submit, body, user, webhook_base=links_for(request).base)
    request.state.request_id = row["request_id"]
    return JSONResponse(await off_loop(generation_view, request, row), status_code=202)


async def generation_status(request: Request) -> Response:
    user = await user_of(request)
    wait = state_of(request).polls.wait(user.id, request.path_params["request_id"])
    if wait > 0:
        rate = state_of(request).settings.poll_rate
        raise ApiError(
            ErrorCode.LIMIT_EXCEEDED,
            f"Polling too fast: at most {rate:g} status request(s) per second per generation",
            {"field": "polling", "limit_per_second": rate, "retry_after_seconds": round(wait, 2)},
            429,
            {"Retry-After": retry_after(wait)},
        )
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
    links = links_for(request)

    def page() -> tuple[list[dict], int]:
        rows, total = state.store.history(
            user.id, query.page, query.per_page, date_from, query.has_seed
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


def parse_date(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"date_from: not an ISO 8601 date: {text!r}",
            {"fields": {"date_from": "expected YYYY-MM-DD or an ISO 8601 date-time"}},
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


async def cancel_generation(request: Request) -> Response:
    user = await user_of(request)
    return JSONResponse(await off_loop(cancel, request, user))


def cancel(request: Request, user: User) -> dict:
    state, row = state_of(request), own_generation(request, user)
    # A running job stops at its next step (or, in a batch, is dropped when it ends); it is
    # failed now, so the answer is final and nothing it produces is recorded or charged.
    state.queue.cancel(row["id"])
    if state.providers is not None:  # a remote job: its runner passes the cancel on
        state.providers.cancel(row["id"])
    cancelled = state.store.fail(row["id"], cancelled_error())
    row = state.store.generation_by_id(row["id"])
    body = generation_view(request, row)
    if not cancelled:
        body["message"] = f"Nothing to cancel: the generation is already {row['status']}"
    return body
