"""The server's Prometheus registry (prometheus-client), one per app: the histograms that
the workers and the request log observe. What is read at scrape time (queue, database
counts, devices) is api/metrics.py's collector.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

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

    def watch(self, collector: Any) -> None:
        """Also report what `collector.collect()` reads at scrape time."""
        self.registry.register(collector)
