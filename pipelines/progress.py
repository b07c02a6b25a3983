"""The denoising loop's progress: steps reported, the stop flag checked, and cheap
previews of the latents (a linear latent-to-RGB map, as AUTOMATIC1111 and ComfyUI use for
their fast previews: no extra weights, no VAE)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.spec import RenderInterrupted

# SDXL's latent channels -> RGB, fitted by ComfyUI (latent_formats.SDXL).
SDXL_LATENT_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


def latent_previews(latents: torch.Tensor | np.ndarray) -> list[Image.Image]:
    """One small picture per image of a batch of SDXL latents (1/8 of the image's size)."""
    factors = torch.tensor(SDXL_LATENT_RGB)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS)
    latents = torch.as_tensor(latents).detach().float().cpu()
    rgb = torch.einsum("bchw,cr->bhwr", latents, factors) + bias
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return [Image.fromarray(array, "RGB") for array in pixels]


class StepProgress:
    """callback_on_step_end for diffusers: maps the pipeline's loop iterations (2 per step
    minus one for heun/dpm2, steps + 1 for pndm) onto 1..steps, and stops on request."""

    def __init__(
        self,
        steps: int,
        on_step: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None,
        on_latents: Callable[[int, Any], None] | None = None,
    ) -> None:
        self.steps = steps
        self.on_step = on_step
        self.should_stop = should_stop
        self.on_latents = on_latents
        self.reported = 0

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict) -> dict:
        iterations = max(int(getattr(pipe, "num_timesteps", 0) or 0), 1)
        done = min(self.steps, -(-(index + 1) * self.steps // iterations))
        if done > self.reported:
            if self.on_latents is not None and "latents" in tensors:
                self.on_latents(done, tensors["latents"])
            while self.on_step is not None and self.reported < done:
                self.reported += 1
                self.on_step(self.reported, self.steps)
            self.reported = done
        if self.should_stop is not None and self.should_stop():
            # diffusers' own interrupt flag (pipe._interrupt) only skips the remaining steps
            # and then still decodes; raising here leaves before the VAE runs.
            raise RenderInterrupted()
        return tensors


def offset_steps(
    on_step: Callable[[int, int], None] | None, done: int, total: int
) -> Callable[[int, int], None] | None:
    """on_step for one pass of several: its steps counted after `done`, out of `total`."""
    if on_step is None:
        return None
    return lambda step, _steps: on_step(done + step, total)
