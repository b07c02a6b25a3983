"""The contract's generation routes: submit, status, events, history, cancel."""

from __future__ import annotations

from datetime import datetime, timezone

from starlette.concurrency import run_in_threadpool
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
from server.api.webhooks import check_webhook_url
from server.contract import ApiError, ErrorCode, HistoryQuery, ImageGenerationRequest, parse
from server.jobs.failures import cancelled_error
from server.state import state_of


async def generate(request: Request) -> Response:
    state = state_of(request)
    user = user_of(request)
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
        await run_in_threadpool(state.providers.prefetch, body)
    row = state.admission.submit(body, user, webhook_base=links_for(request).base)
    request.state.request_id = row["request_id"]
    return JSONResponse(generation_view(request, row), status_code=202)


async def generation_status(request: Request) -> Response:
    user = user_of(request)
    check_poll_rate(request, user)
    return JSONResponse(generation_view(request, own_generation(request, user)))


async def generation_events(request: Request) -> Response:
    row = own_generation(request, user_of(request))
    return stream_events(request, row["id"], lambda row: generation_view(request, row))


async def history(request: Request) -> Response:
    state = state_of(request)
    user = user_of(request)
    query = parse(HistoryQuery, dict(request.query_params))
    date_from = parse_date(query.date_from) if query.date_from else None
    rows, total = state.store.history(
        user.id, query.page, query.per_page, date_from, query.has_seed
    )
    images = state.store.images_of([row["id"] for row in rows])
    links = links_for(request)
    items = [
        views.history_item(row, images[row["id"]], links, state.queue, state.admission)
        for row in rows
    ]
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
    state = state_of(request)
    row = own_generation(request, user_of(request))
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
    return JSONResponse(body)
