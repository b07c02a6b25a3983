"""Webhooks over HTTP: the check of `options.webhook_url` at submit, GET /generations/{id}
(the status object plus its delivery's state) and the delivery metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api import views
from server.api.common import check_poll_rate, links_for, own_generation, user_of
from server.api.offload import off_loop
from server.api.views import generation_inputs, iso
from server.contract import ApiError, ErrorCode, ImageGenerationRequest
from server.net import ssrf
from server.state import state_of
from server.store.accounts import User
from server.store.figures import DatabaseFigures
from server.store.vault import read_infotext
from server.store.webhooks import FINISHED

FIELD = "options.webhook_url"


async def check_webhook_url(request: Request, body: ImageGenerationRequest) -> None:
    """Refuse a webhook URL whose host may not receive webhooks (400 VALIDATION_ERROR).
    Resolving a name may block: it runs off the event loop."""
    url = body.options.webhook_url
    if not url:
        return
    allow = state_of(request).settings.webhook_allow_private
    problem = await off_loop(ssrf.check, url, allow)
    if problem:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Invalid request: {FIELD}: {problem}",
            {"fields": {FIELD: problem}},
        )


def webhook_view(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    # 'waiting': the generation has not ended yet, so nothing is due.
    return {
        "url": row["url"],
        "state": row["state"],
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "next_attempt_at": iso(row["next_attempt_at"]) if row["state"] == "pending" else None,
        "last_error": row["last_error"],
    }


async def generation_detail(request: Request) -> Response:
    """GET /generations/{id}: the status object, plus `webhook` (null without one) and
    `inputs` (an image-to-image's init image and mask; null for others)."""
    user = await user_of(request)
    check_poll_rate(request, user)
    return JSONResponse(await off_loop(detail, request, user))


def detail(request: Request, user: User) -> dict:
    """The generation's history item, its webhook, its inputs, and each image's infotext
    read from its file (the console's image page shows it)."""
    state = state_of(request)
    row = own_generation(request, user)
    links = links_for(request)
    images = state.store.images_of([row["id"]])[row["id"]]
    body = views.history_item(row, images, links, state.queue, state.admission)
    body["webhook"] = webhook_view(state.store.webhook_delivery(row["request_id"]))
    body["inputs"] = generation_inputs(row, links)
    for shown, image in zip(body.get("images") or [], images, strict=False):
        shown["infotext"] = read_infotext(state.vault.path(image["file_name"]))
    return body


class WebhookCollector:
    """Deliveries by outcome, read from the database (so they survive restarts)."""

    def __init__(self, figures: DatabaseFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        counts = self.figures.webhook_counts()
        outcomes = CounterMetricFamily(
            "darkroom_webhook_deliveries", "Webhook deliveries ended, by outcome",
            labels=["outcome"],
        )
        for outcome in FINISHED:
            outcomes.add_metric([outcome], counts.get(outcome, 0))
        yield outcomes
        yield GaugeMetricFamily(
            "darkroom_webhook_deliveries_pending", "Webhook deliveries due or being retried",
            value=counts.get("pending", 0),
        )
