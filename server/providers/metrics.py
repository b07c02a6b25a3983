"""Per-provider figures for /metrics, read at scrape time: finished jobs by provider, status
and code, and the latency from submit to the end (from the database, so they survive
restarts), jobs in flight, and whether each remote answered last time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from server.contract import ErrorCode

# Read from the database: on several nodes, reported by one node for the whole cluster.
CLUSTER_SCOPED = frozenset(
    {"darkroom_provider_jobs", "darkroom_provider_failures", "darkroom_provider_latency_seconds"}
)


def provider_metrics(state: Any) -> Iterator[Metric]:
    providers = state.providers
    jobs = CounterMetricFamily(
        "darkroom_provider_jobs",
        "Finished generations by provider, status and error code",
        labels=["provider", "status", "code"],
    )
    failures = CounterMetricFamily(
        "darkroom_provider_failures",
        "Failed generations by provider (a user's cancellation is not a failure)",
        labels=["provider"],
    )
    latency = SummaryMetricFamily(
        "darkroom_provider_latency_seconds",
        "Seconds from submit to completion, completed generations, by provider",
        labels=["provider"],
    )
    failed: dict[str, int] = {}
    for row in state.figures.provider_counts():
        jobs.add_metric([row["provider"], row["status"], row["code"]], row["n"])
        if row["status"] == "failed":
            if row["code"] == ErrorCode.CANCELLED:
                continue
            failed[row["provider"]] = failed.get(row["provider"], 0) + int(row["n"])
        else:
            latency.add_metric([row["provider"]], row["n"], float(row["seconds"] or 0.0))
    for name, count in failed.items():
        failures.add_metric([name], count)
    yield jobs
    yield failures
    yield latency
    active = GaugeMetricFamily(
        "darkroom_provider_active", "Remote generations being watched", labels=["provider"]
    )
    up = GaugeMetricFamily(
        "darkroom_provider_up",
        "1 if the remote answered last time it was asked, 0 if not (absent: not yet asked)",
        labels=["provider"],
    )
    for name, provider in providers.remotes.items():
        active.add_metric([name], providers.runner.active(name))
        if provider.health.reachable is not None:
            up.add_metric([name], int(provider.health.reachable))
    yield active
    yield up
