"""Every device in the box: one Worker (render thread, supervisor, render process with its
own loaded models and LoRA cache) per device, all taking from the same fair queue.

The pool answers what /health and /metrics ask about the devices, and what readiness
needs: the server is ready while any device is in service. A device out of service
(server/jobs/device_health.py) takes no jobs until its worker has started it afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipelines.devices import device_labels, parse_devices
from pipelines.spec import Renderer
from pipelines.tuning import available_cores
from server.config import Settings
from server.jobs.device_health import DeviceHealth
from server.jobs.worker import Worker


def device_settings(settings: Settings) -> list[Settings]:
    """One Settings per device (`device` set, CPU threads split among CPU devices)."""
    specs = parse_devices(settings.devices, settings.device)
    cpus = specs.count("cpu")
    threads = settings.cpu_threads  # 0: all cores but one
    if cpus > 1:
        threads = max(1, (settings.cpu_threads or available_cores() - 1) // cpus)
    own = settings.cpu_threads
    return [
        replace(settings, device=spec, cpu_threads=threads if spec == "cpu" else own)
        for spec in specs
    ]


def device_names(settings: Settings) -> list[str | None]:
    return device_labels(parse_devices(settings.devices, settings.device))


class DevicePool:
    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    @classmethod
    def build(
        cls,
        renderers: list[Renderer],
        names: list[str | None],
        settings: Settings,
        make_worker: Callable[[Renderer, DeviceHealth], Worker],
    ) -> DevicePool:
        workers = []
        for index, renderer in enumerate(renderers):
            name = names[index] if index < len(names) else None
            name = name or (f"device{index}" if len(renderers) > 1 else "default")
            health = DeviceHealth(name, settings.device_failures, settings.device_retry)
            workers.append(make_worker(renderer, health))
        return cls(workers)

    @property
    def primary(self) -> Worker | None:
        return self.workers[0] if self.workers else None

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def drain(self, timeout: float) -> bool:
        """Take no new jobs and wait for every device's running one."""
        if not self.workers:
            return True
        return self.workers[0].drain(timeout)  # the queue is shared: this waits for all

    def stop(self) -> None:
        for worker in self.workers:
            worker._stopping = True
        for worker in self.workers:
            worker.stop()

    # What the rest of the server asks about "the renderer".

    def measured_speed(self) -> float | None:
        """Seconds per work unit measured on the first device that measured one."""
        for worker in self.workers:
            speed = worker.measured_speed()
            if speed is not None:
                return speed
        return None

    def loaded_models(self) -> set[str | None]:
        loaded: set[str | None] = set()
        for worker in self.workers:
            loaded |= worker.loaded_models()
        return loaded

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self.workers)

    # Per device.

    @staticmethod
    def name_of(worker: Worker) -> str:
        return worker.device_name

    @staticmethod
    def state_of(worker: Worker) -> str:
        """loading, ready, busy, out_of_service or failed."""
        if worker.health.out_of_service:
            return "out_of_service"
        if worker.state in ("loading", "failed"):
            return worker.state
        return "busy" if worker.current else "ready"

    @staticmethod
    def usable(worker: Worker) -> bool:
        """Renders, or will take the next job: loaded, alive, not stuck, in service."""
        return (
            worker.state == "ready"
            and worker.alive
            and worker.stuck_job is None
            and not worker.health.out_of_service
        )

    def any_usable(self) -> bool:
        return any(self.usable(worker) for worker in self.workers)

    def describe(self) -> list[dict[str, Any]]:
        """/health's `devices`."""
        return [self.entry(worker) for worker in self.workers]

    def entry(self, worker: Worker) -> dict[str, Any]:
        health, renderer = worker.health, worker.renderer
        retry = health.seconds_to_retry() if health.out_of_service else None
        return {
            "name": self.name_of(worker),
            "device": renderer.device,
            "state": self.state_of(worker),
            "jobs_done": health.jobs_done,
            "outcomes": dict(health.outcomes),
            "failures": health.failures,
            "consecutive_failures": health.consecutive_failures,
            "reason": health.reason if health.out_of_service else worker.load_error,
            "last_reason": health.reason,
            "retry_in_seconds": round(retry, 1) if retry is not None else None,
            "memory_bytes": renderer.device_memory_bytes(),
            "model_loaded": worker.state == "ready",
            "models": sorted(str(model) for model in renderer.loaded_models),
            "running_jobs": len(worker.current),
            "worker_alive": worker.alive,
            "worker_restarts": worker.restarts,
            "pid": renderer.pid,
        }
