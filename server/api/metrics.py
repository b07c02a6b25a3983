"""GET /metrics in Prometheus' text format, and what it reads at scrape time.

Counts of finished jobs and images are read from the database, so they survive restarts,
by a thread of their own (store/figures.py): a scrape never waits on a locked database.
Durations are observed by the workers as jobs finish (server/metrics.py). The page is
built off the event loop (a cluster's queue depth is a database read too).

Several nodes on one database: every sample carries `node="..."`. What is read from the
shared database (CLUSTER_SCOPED: jobs by status, images, queue depth, per-provider jobs)
is the cluster's, so only one node reports it, the live node with the smallest id, with
`scope="cluster"` added; the others leave those series out. Summing any metric over every
node's /metrics so gives the true total.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response

from server.api.auth import api_token, unauthorized
from server.api.offload import off_loop
from server.providers.metrics import CLUSTER_SCOPED as PROVIDER_CLUSTER_SCOPED
from server.providers.metrics import provider_metrics
from server.state import AppState, state_of

CLUSTER_SCOPED = frozenset(
    {"darkroom_queue_depth", "darkroom_jobs", "darkroom_images_generated"}
) | PROVIDER_CLUSTER_SCOPED


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
        workers = state.devices.workers
        yield _gauge("darkroom_model_loaded", "1 once the model is loaded (on any device)",
                     int(any(worker.state == "ready" for worker in workers)))
        yield _counter("darkroom_worker_restarts", "Worker threads restarted",
                       state.devices.restarts)
        jobs = CounterMetricFamily(
            "darkroom_jobs", "Finished generations by status and error code",
            labels=["status", "code"],
        )
        for row in state.figures.finished_counts():
            jobs.add_metric([row["status"], row["code"]], row["n"])
        yield jobs
        yield _counter("darkroom_images_generated", "Images generated",
                       state.figures.image_count())
        caches = [worker.renderer.adapters for worker in workers]
        if caches:
            yield _counter("darkroom_lora_cache_hits", "LoRAs found loaded",
                           sum(adapters.hits for adapters in caches))
            yield _counter("darkroom_lora_cache_misses", "LoRAs loaded from disk",
                           sum(adapters.misses for adapters in caches))
        if state.providers is not None:
            yield from provider_metrics(state)
        entries = state.devices.describe()
        memory = [entry["memory_bytes"] for entry in entries if entry["memory_bytes"] is not None]
        if memory:
            yield _gauge("darkroom_gpu_memory_bytes", "Device memory allocated", sum(memory))
        yield from _devices(entries)


def _devices(entries: list[dict]) -> Iterator[Metric]:
    """Per device (--devices): busy, in service, jobs by outcome, memory."""
    busy = GaugeMetricFamily(
        "darkroom_device_busy", "1 while the device renders", labels=["device"]
    )
    up = GaugeMetricFamily(
        "darkroom_device_in_service", "1 unless the device is out of service or failed",
        labels=["device"],
    )
    jobs = CounterMetricFamily(
        "darkroom_device_jobs", "Jobs a device ended, by outcome (since start)",
        labels=["device", "outcome"],
    )
    memory = GaugeMetricFamily(
        "darkroom_device_memory_bytes", "Device memory allocated", labels=["device"]
    )
    for entry in entries:
        name = entry["name"]
        busy.add_metric([name], int(entry["state"] == "busy"))
        up.add_metric([name], int(entry["state"] not in ("out_of_service", "failed")))
        for outcome, count in sorted(entry["outcomes"].items()):
            jobs.add_metric([name, outcome], count)
        if entry["memory_bytes"] is not None:
            memory.add_metric([name], entry["memory_bytes"])
    yield from (busy, up, jobs, memory)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class NodeLabelled:
    """The registry as a node of a cluster reports it: every sample also carries
    `node="..."`, so one Prometheus scraping several nodes (or a dashboard summing them)
    tells them apart. A sample that already names its node keeps its own. The cluster's
    series (CLUSTER_SCOPED) are left out unless `reporter`, and then carry
    `scope="cluster"`."""

    def __init__(self, registry: Any, node: str, reporter: bool) -> None:
        self.registry = registry
        self.node = node
        self.reporter = reporter

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            shared = metric.name in CLUSTER_SCOPED
            if shared and not self.reporter:
                continue
            family = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for sample in metric.samples:
                labels = sample.labels if "node" in sample.labels else {
                    **sample.labels, "node": self.node
                }
                if shared:
                    labels = {**labels, "scope": "cluster"}
                family.add_sample(
                    sample.name, labels, sample.value, sample.timestamp, sample.exemplar
                )
            yield family


def reports_cluster(node: str, nodes: list[dict[str, Any]], state: AppState) -> bool:
    """Whether this node reports the cluster's series: it is the live node (heartbeat
    within a lease) with the smallest id. While a node dies or joins, a scrape or two may
    see the cluster's series twice or not at all."""
    live = [n["id"] for n in nodes if n["seconds_since_heartbeat"] <= state.settings.lease_seconds]
    return min([*live, node]) == node


async def metrics_endpoint(request: Request) -> Response:
    state = state_of(request)
    wanted = state.settings.metrics_token
    if wanted:  # --metrics-token: Prometheus' `authorization: {credentials: ...}`
        given = api_token(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(given.encode(), wanted.encode()):
            raise unauthorized(
                "/metrics needs the metrics token: send 'Authorization: Bearer <token>'",
                "invalid_token" if given else None,
            )
    registry: Any = state.metrics.registry
    nodes = getattr(state.queue, "nodes", None)
    if nodes is not None:  # several nodes share one database
        node = state.settings.node
        registry = NodeLabelled(registry, node, reports_cluster(node, await off_loop(nodes), state))
    await off_loop(state.figures.refresh)
    return Response(await off_loop(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)
