"""Brownian-tree noise for the SDE samplers, as k-diffusion and AUTOMATIC1111 draw it.

k-diffusion's DPM++ SDE and DPM++ 2M SDE take their noise for the step sigma -> sigma_next
from a BrownianTreeNoiseSampler (torchsde), one tree per image seeded with that image's
seed (AUTOMATIC1111 passes `all_seeds`). The trees here live on the CPU in float32, so an
image's noise depends only on its seed, the latent shape and the sigma range: the same on
any device, alone or inside a batch.

The schedulers below are diffusers' own with only the noise source replaced. They are cached
per sampler by the renderer, so `set_noise_seeds` is called before every render and every
`set_timesteps` (which the pipeline calls once per render) drops the previous render's trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler


class PerImageBrownianNoise:
    """noise(sigma, sigma_next, like): unit-variance noise for that step, one Brownian tree
    per image (seeded with its seed), on the CPU in float32, then moved to `like`."""

    def __init__(
        self, shape: Sequence[int], sigma_min: float, sigma_max: float, seeds: Sequence[int]
    ) -> None:
        if len(seeds) != shape[0]:
            raise ValueError(f"{len(seeds)} noise seeds for a batch of {shape[0]} latents")
        template = torch.zeros(tuple(shape), dtype=torch.float32)
        self._sampler = BrownianTreeNoiseSampler(
            template, float(sigma_min), float(sigma_max), [int(seed) for seed in seeds]
        )
        # The ends as the trees hold them: torchsde rounds them to its tolerance's digits.
        tree = self._sampler.tree.trees[0]
        self._range = (float(tree._start), float(tree._end))

    def __call__(self, sigma: Any, sigma_next: Any, like: torch.Tensor) -> torch.Tensor:
        # The smallest sigma lies a rounding error below the tree's rounded start, where
        # torchsde warns and clamps; clamp first, to the same effect without the warning.
        low, high = self._range
        sigma, sigma_next = (
            torch.as_tensor(s, dtype=torch.float64).cpu().clamp(low, high)
            for s in (sigma, sigma_next)
        )
        noise = self._sampler(sigma, sigma_next)
        return noise.to(device=like.device, dtype=like.dtype)


class _SeededNoise:
    """Per-render seeds for a cached scheduler (one per latent in the batch, in order)."""

    _noise_seeds: tuple[int, ...] | None = None

    def set_noise_seeds(self, seeds: Sequence[int] | None) -> None:
        self._noise_seeds = None if seeds is None else tuple(int(seed) for seed in seeds)
        self._drop_trees()

    def _drop_trees(self) -> None:
        raise NotImplementedError

    def _brownian_noise(self, sample: torch.Tensor, sigmas: torch.Tensor) -> PerImageBrownianNoise:
        if self._noise_seeds is None:
            raise RuntimeError("set_noise_seeds(seeds) must be called before an SDE sampler runs")
        positive = sigmas[sigmas > 0]
        return PerImageBrownianNoise(
            sample.shape, positive.min().item(), sigmas.max().item(), self._noise_seeds
        )


class BrownianDPMSolverSDEScheduler(_SeededNoise, DPMSolverSDEScheduler):
    """diffusers' DPMSolverSDEScheduler (k-diffusion's sample_dpmpp_sde, which already uses a
    Brownian tree) with the tree seeded per image from the render's seeds."""

    def _drop_trees(self) -> None:
        self.noise_sampler = None

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        s_noise: float = 1.0,
    ) -> Any:
        if self.noise_sampler is None:
            noise = self._brownian_noise(sample, self.sigmas)
            self.noise_sampler = lambda sigma, sigma_next: noise(sigma, sigma_next, sample)
        return super().step(model_output, timestep, sample, return_dict, s_noise)


class BrownianDPMSolverMultistepScheduler(_SeededNoise, DPMSolverMultistepScheduler):
    """diffusers' DPMSolverMultistepScheduler; with algorithm_type="sde-dpmsolver++" it is
    k-diffusion's sample_dpmpp_2m_sde, whose noise for sigma -> sigma_next comes from a
    Brownian tree (k-diffusion's BrownianTreeNoiseSampler) instead of plain randn."""

    _noise: PerImageBrownianNoise | None = None

    def _drop_trees(self) -> None:
        self._noise = None

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self._drop_trees()

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        if variance_noise is None and self.config.algorithm_type == "sde-dpmsolver++":
            if self.step_index is None:
                self._init_step_index(timestep)
            sigma = self.sigmas[self.step_index]
            sigma_next = self.sigmas[self.step_index + 1]
            if sigma_next > 0:
                if self._noise is None:
                    self._noise = self._brownian_noise(sample, self.sigmas)
                variance_noise = self._noise(sigma, sigma_next, model_output)
            else:
                # k-diffusion's last step to sigma 0 draws no noise; diffusers scales it by 0.
                variance_noise = torch.zeros_like(model_output)
        return super().step(model_output, timestep, sample, generator, variance_noise, return_dict)
