"""One small pipeline per failure mode, as Cog's server tests have. Each wraps the real tiny
renderer (`inner`) for the renders that should succeed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image

from pipelines.spec import ModelSpec, RenderInterrupted


class FakeRenderer:
    """Every pipelines.spec.Renderer member a fake does not care about: in this process,
    one model, no LoRA check, no memory figures, nothing to measure or kill."""

    model, device = "fake", "cpu"
    plan = SimpleNamespace(max_batch=1)
    adapters = SimpleNamespace(hits=0, misses=0)
    lora_compatibility = None
    pid = None

    @property
    def loaded_models(self) -> list[str]:
        return [self.model]

    def model_key(self, model: ModelSpec | None) -> str | None:
        return self.model if model is None else model.key

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def kill(self, reason: str) -> bool:
        return False

    def warmup(self, sizes: Iterable[tuple[int, int]], images: Iterable[int] = (1, 2)) -> None:
        pass

    def measure_speed(self, width: int = 512, height: int = 512, steps: int = 3) -> float | None:
        return None

    def free_memory(self) -> None:
        pass

    def device_memory_bytes(self) -> int | None:
        return None


class Solid(FakeRenderer):
    """Renders instantly: flat images, for tests where the real model's speed would matter."""

    def render(self, spec, on_step=None, should_stop=None, on_latents=None):  # type: ignore[no-untyped-def]
        return [
            Image.new("RGB", (spec.width, spec.height), (seed % 256, 0, 0)) for seed in spec.seeds
        ]

    def render_batch(self, specs, on_step=None, should_stop=None, on_latents=None):  # type: ignore[no-untyped-def]
        return [self.render(spec) for spec in specs]


class Fake(FakeRenderer):
    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.calls = 0
        self.prompts: list[str] = []
        self.batches: list[list[str]] = []  # the prompts of each call, batch or not
        self.started = threading.Event()

    def render(self, spec, on_step=None, should_stop=None, on_latents=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.prompts.append(spec.prompt)
        self.batches.append([spec.prompt])
        self.started.set()
        self.misbehave(spec, on_step, should_stop)
        return self.inner.render(spec, on_step, should_stop, on_latents)

    def render_batch(self, specs, on_step=None, should_stop=None, on_latents=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.prompts += [spec.prompt for spec in specs]
        self.batches.append([spec.prompt for spec in specs])
        self.started.set()
        self.misbehave(specs[0], on_step, should_stop)
        return self.inner.render_batch(specs, on_step, should_stop, on_latents)

    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        pass


class RaisesOnce(Fake):
    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        if self.calls == 1:
            raise RuntimeError("CUDA kernel exploded\nTraceback (most recent call last): ...")


class OutOfMemory(Fake):
    """Runs out of device memory for batches larger than `fits` images."""

    def __init__(self, inner: Any, fits: int) -> None:
        super().__init__(inner)
        self.fits = fits
        self.freed = 0

    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        if spec.num_images > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def free_memory(self) -> None:
        self.freed += 1


class Stalls(Fake):
    """Never finishes on its own, but honours its stop flag between steps."""

    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        step = 0
        while not should_stop():
            step = min(step + 1, spec.steps)
            if on_step:
                on_step(step, spec.steps)
            time.sleep(0.01)
        raise RenderInterrupted


class StallsOnce(Stalls):
    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        if self.calls == 1:
            super().misbehave(spec, on_step, should_stop)


class Hangs(Fake):
    """Stuck inside a step: ignores its stop flag until `release` is set."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.release = threading.Event()

    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        if self.calls == 1:
            self.release.wait(60)


class WorkerDeath(BaseException):
    """Nothing a job handler catches: the worker thread ends."""


class Dies(Fake):
    """Kills the worker thread on its first render; the first `failed_reloads` reloads fail."""

    def __init__(self, inner: Any, failed_reloads: int = 0) -> None:
        super().__init__(inner)
        self.loads = 0
        self.failed_reloads = failed_reloads
        self.allow_reload = threading.Event()

    def load(self) -> None:
        self.loads += 1
        if 1 < self.loads <= 1 + self.failed_reloads:
            raise OSError("weights vanished")

    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        if self.calls == 1:
            raise WorkerDeath


class NeverLoads(Fake):
    model = "broken"

    def load(self) -> None:
        raise OSError("no weights here")
