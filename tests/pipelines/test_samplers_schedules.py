"""Every listed AUTOMATIC1111 sampler x scheduler runs A1111's own sigmas: diffusers'
schedules compared with A1111 1.10's formulas (modules/sd_schedulers.py, k-diffusion's
get_sigmas_*) on SDXL's noise schedule."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from pipelines.samplers import (
    UnsupportedSampler,
    a1111_samplers,
    a1111_schedulers,
    make_scheduler,
    resolve,
)
from pipelines.sdxl_configs import SCHEDULER

# SDXL's training sigmas (scaled_linear betas 0.00085..0.012 over 1000 steps)
_ALPHAS = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2)
SIGMAS = ((1 - _ALPHAS) / _ALPHAS) ** 0.5
SIGMA_MIN, SIGMA_MAX = SIGMAS[0], SIGMAS[-1]


def _t_to_sigma(t: np.ndarray) -> np.ndarray:
    """k-diffusion's DiscreteSchedule.t_to_sigma: log-sigma interpolated between steps."""
    low = np.floor(t).astype(int)
    high = np.minimum(low + 1, 999)
    w = t - low
    return np.exp((1 - w) * np.log(SIGMAS[low]) + w * np.log(SIGMAS[high]))


def a1111_sigmas(schedule: str, n: int) -> np.ndarray:
    if schedule in ("uniform", "normal"):  # inner_model.get_sigmas(n); normal_scheduler
        sigmas = _t_to_sigma(np.linspace(999, 0, n))
    elif schedule == "karras":  # get_sigmas_karras, rho 7
        ramp = np.linspace(0, 1, n)
        lo, hi = SIGMA_MIN ** (1 / 7), SIGMA_MAX ** (1 / 7)
        sigmas = (hi + ramp * (lo - hi)) ** 7
    elif schedule == "exponential":
        sigmas = np.exp(np.linspace(np.log(SIGMA_MAX), np.log(SIGMA_MIN), n))
    elif schedule == "beta":  # beta_scheduler, alpha = beta = 0.6 (A1111's defaults)
        ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
        sigmas = SIGMA_MIN + ppf * (SIGMA_MAX - SIGMA_MIN)
    else:
        raise AssertionError(schedule)
    return np.append(sigmas, 0.0)


def _step_sigmas(scheduler: object) -> np.ndarray:
    """The sigma of each step (second-order schedulers repeat or interleave theirs)."""
    sigmas = np.asarray(scheduler.sigmas, dtype=np.float64)  # type: ignore[attr-defined]
    return np.array([s for i, s in enumerate(sigmas) if i == 0 or s != sigmas[i - 1]])


def _combinations() -> list[tuple[str, str]]:
    found = []
    for sampler in a1111_samplers():
        if sampler["name"] in ("DDIM", "PLMS"):  # timestep samplers: no sigma schedule
            continue
        for schedule in a1111_schedulers():
            try:  # refusals are checked in tests/pipelines/test_samplers_a1111.py
                found.append((resolve(sampler["name"], schedule["name"]), schedule["name"]))
            except UnsupportedSampler:
                continue
    return found


@pytest.mark.parametrize(("name", "schedule"), _combinations(), ids=str)
def test_listed_combination_runs_a1111_sigmas(name: str, schedule: str) -> None:
    if schedule == "automatic":
        schedule = "uniform" if name in ("euler", "euler_a", "lms", "heun") else name.split("_")[-1]
    scheduler = make_scheduler(name, SCHEDULER)
    for steps in (10, 20, 30, 37):
        scheduler.set_timesteps(steps)
        expected = a1111_sigmas(schedule, steps)
        got = _step_sigmas(scheduler)
        assert len(got) == len(expected), (name, steps)
        np.testing.assert_allclose(got, expected, rtol=1e-4, err_msg=f"{name} at {steps} steps")


def test_the_models_own_leading_spacing_does_not_leak_into_a1111_schedules() -> None:
    # SDXL's config says "leading": with it diffusers' Karras sigmas would start at 8.4
    scheduler = make_scheduler("euler_karras", SCHEDULER)
    scheduler.set_timesteps(10)
    assert scheduler.sigmas[0] == pytest.approx(SIGMA_MAX, rel=1e-4)
