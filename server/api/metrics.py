"""GET /metrics in Prometheus' text format, and what it reads at scrape time.

Counts of finished jobs and images are read from the database, so they survive restarts;
durations are observed by the workers as jobs finish (server/metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response

from server.state import AppState, state_of


class StateCollector:
    """What is read at scrape time: queue, worker, database counts, LoRA cache, GPU."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        running = len(state.queue.running)
        info = GaugeMetricFamily("darkroom_node_info", "This node's id", labels=["node"])
        info.add_metric([state.settings.node], 1)
        yield info
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
        for row in state.store.finished_counts():
            jobs.add_metric([row["status"], row["code"]], row["n"])
        yield jobs
        yield _counter("darkroom_images_generated", "Images generated",
                       state.store.image_count())
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
    state = state_of(request)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
