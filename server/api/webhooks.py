"""Webhooks over HTTP: the check of `options.webhook_url` at submit, GET /generations/{id}
(the status object plus its delivery's state) and the delivery metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.common import generation_view, own_generation, user_of
from server.api.offload import off_loop
from server.api.views import iso
from server.contract import ApiError, ErrorCode, ImageGenerationRequest
from server.jobs import ssrf
from server.jobs.limits import retry_after
from server.state import state_of
from server.store.accounts import User
from server.store.figures import DatabaseFigures
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
    """GET /generations/{id}: the status object, plus `webhook` (null without one)."""
    state = state_of(request)
    user = await user_of(request)
    wait = state.polls.wait(user.id, request.path_params["request_id"])
    if wait > 0:
        raise ApiError(
            ErrorCode.LIMIT_EXCEEDED,
            f"Polling too fast: at most {state.settings.poll_rate:g} status request(s) per"
            " second per generation",
            {"field": "polling", "limit_per_second": state.settings.poll_rate,
             "retry_after_seconds": round(wait, 2)},
            429,
            {"Retry-After": retry_after(wait)},
        )
    return JSONResponse(await off_loop(detail, request, user))


def detail(request: Request, user: User) -> dict:
    row = own_generation(request, user)
    body = generation_view(request, row)
    body["webhook"] = webhook_view(state_of(request).store.webhook_delivery(row["request_id"]))
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
