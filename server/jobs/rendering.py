"""One batch through a renderer: steps and stop flags wired to the jobs, latent previews,
and running out of device memory answered by rendering one image at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from PIL import Image

from pipelines.spec import GenerationSpec, Renderer
from server.jobs.failures import OutOfMemory, is_out_of_memory
from server.jobs.results import Previews
from server.progress import Progress

log = logging.getLogger("darkroom.worker")


def render_jobs(
    renderer: Renderer,
    specs: list[GenerationSpec],
    jobs: list[Progress],
    touch: Callable[[], None],
    preview_every: int,
) -> list[list[Image.Image]]:
    def on_step(step: int, total: int) -> None:
        for job in jobs:
            job.step, job.total_steps = step, total
        touch()

    def should_stop() -> bool:
        # A batch stops only when all its jobs want to; a cancelled member is dropped.
        return all(job.stop.is_set() for job in jobs)

    on_latents = Previews(jobs, specs, preview_every, touch)
    try:
        if len(specs) == 1:
            return [renderer.render(specs[0], on_step, should_stop, on_latents)]
        return renderer.render_batch(specs, on_step, should_stop, on_latents)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        renderer.free_memory()
        if sum(spec.num_images for spec in specs) == 1:
            raise OutOfMemory from exc
    count = sum(spec.num_images for spec in specs)
    log.warning("out of memory with %d images at once; trying one at a time", count)
    results: list[list[Image.Image]] = []
    try:
        for spec in specs:
            images: list[Image.Image] = []
            for seed in spec.seeds:
                single = replace(spec, seeds=(seed,))
                images += renderer.render(single, on_step, should_stop)
            results.append(images)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        renderer.free_memory()
        raise OutOfMemory from exc
    return results
