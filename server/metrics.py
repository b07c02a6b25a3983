"""GET /metrics in Prometheus' text format (prometheus-client), one registry per app.

Counts of finished jobs and images are read from the database at scrape time, so they
survive restarts; durations are observed by the worker as jobs finish.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from server.state import AppState

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STEP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_wait = Histogram(
            "darkroom_queue_wait_seconds", "Time from submit to render start",
            buckets=SECONDS, registry=self.registry,
        )
        self.render = Histogram(
            "darkroom_render_seconds", "Render time of a job (its share of a batch)",
            buckets=SECONDS, registry=self.registry,
        )
        self.step = Histogram(
            "darkroom_step_seconds", "Seconds per denoising step, per image",
            buckets=STEP_SECONDS, registry=self.registry,
        )
        self.http = Histogram(
            "darkroom_http_request_duration_seconds", "HTTP request handling time",
            ["route", "method", "status"], buckets=HTTP_SECONDS, registry=self.registry,
        )
        self.event_streams = Gauge(
            "darkroom_event_streams", "Open Server-Sent Events streams", registry=self.registry
        )

    def job_done(self, waited: float, seconds: float, steps: int, images: int) -> None:
        self.queue_wait.observe(max(0.0, waited))
        self.render.observe(seconds)
        self.step.observe(seconds / max(1, steps * images))

    def watch(self, state: AppState) -> None:
        self.registry.register(_StateCollector(state))


class _StateCollector:
    """What is read at scrape time: queue, worker, database counts, LoRA cache, GPU."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        running = len(state.queue.running)
        yield _gauge("darkroom_queue_depth", "Pending generations", state.queue.depth() - running)
        yield _gauge("darkroom_running_jobs", "Generations rendering now", running)
        yield _gauge("darkroom_model_loaded", "1 once the model is loaded",
                     int(state.worker.state == "ready"))
        yield _counter("darkroom_worker_restarts", "Worker threads restarted",
                       state.worker.restarts)
        jobs = CounterMetricFamily(
            "darkroom_jobs", "Finished generations by status and error code",
            labels=["status", "code"],
        )
        for row in state.store.fetch_all(
            "SELECT status, COALESCE(json_extract(error_json, '$.code'), '') AS code,"
            " COUNT(*) AS n FROM generations WHERE status IN ('completed', 'failed')"
            " GROUP BY status, code"
        ):
            jobs.add_metric([row["status"], row["code"]], row["n"])
        yield jobs
        images = state.store.fetch_one("SELECT COUNT(*) AS n FROM images")
        yield _counter("darkroom_images_generated", "Images generated",
                       images["n"] if images else 0)
        adapters = getattr(state.worker.renderer, "adapters", None)
        if adapters is not None and hasattr(adapters, "hits"):
            yield _counter("darkroom_lora_cache_hits", "LoRAs found loaded", adapters.hits)
            yield _counter("darkroom_lora_cache_misses", "LoRAs loaded from disk",
                           adapters.misses)
        memory = getattr(state.worker.renderer, "device_memory_bytes", None)
        in_use = memory() if callable(memory) else None
        if in_use is not None:
            yield _gauge("darkroom_gpu_memory_bytes", "Device memory allocated", in_use)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


async def metrics_endpoint(request: Request) -> Response:
    state: Any = request.app.state.darkroom
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
