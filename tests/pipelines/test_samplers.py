"""Sampler names (ours, AUTOMATIC1111's, ComfyUI's) and the schedulers they build."""

from __future__ import annotations

import pytest

from pipelines.samplers import SAMPLER_NAMES, canonical_sampler, make_scheduler

# fmt: off
SPELLINGS = {
    "euler": "euler", "Euler": "euler", "Euler a": "euler_a", "euler_ancestral": "euler_a",
    "DDIM": "ddim", "DPM++ 2M": "dpmpp_2m", "DPM++ 2M Karras": "dpmpp_2m_karras",
    "dpmpp_2m_sde": "dpmpp_2m_sde", "DPM++ 2M SDE Karras": "dpmpp_2m_sde_karras",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde", "DPM++ SDE": "dpmpp_sde", "Heun": "heun",
    "DPM2": "dpm2", "dpm_2": "dpm2", "DPM2 a": "dpm2_a", "dpm_2_ancestral": "dpm2_a",
    "DPM2 a Karras": "dpm2_a_karras", "PLMS": "pndm", "UniPC": "unipc", "uni_pc": "unipc",
    "  DEIS ": "deis", "k_euler_a": "euler_a",
}
REQUIRED_SAMPLERS = {
    "euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde",
    "dpmpp_2m_sde_karras", "dpmpp_sde", "heun", "lms", "dpm2", "dpm2_a", "unipc", "pndm", "deis",
}
# fmt: on


def test_canonical_sampler_accepts_a1111_and_comfyui_names_only() -> None:
    assert {given: canonical_sampler(given) for given in SPELLINGS} == SPELLINGS
    for unknown in ("", "euler_b", "DPM fast", "lcm", "restart"):
        assert canonical_sampler(unknown) is None


def test_sampler_names_are_canonical_sorted_and_complete() -> None:
    assert list(SAMPLER_NAMES) == sorted(SAMPLER_NAMES)
    assert all(canonical_sampler(name) == name for name in SAMPLER_NAMES)
    assert set(SAMPLER_NAMES) >= REQUIRED_SAMPLERS
    assert canonical_sampler("LMS Karras") == "lms_karras"


def test_make_scheduler_keeps_the_model_config_and_sets_the_sampler_options() -> None:
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    base = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", use_karras_sigmas=True,
    ).config  # fmt: skip
    scheduler = make_scheduler("DPM++ 2M SDE Karras", base)
    # diffusers' own, with Brownian-tree noise (pipelines/sde_noise.py)
    assert isinstance(scheduler, DPMSolverMultistepScheduler)
    assert scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert scheduler.config.use_karras_sigmas is True and scheduler.config.beta_end == 0.012
    # A model whose scheduler uses Karras sigmas must not leak them into plain samplers.
    assert make_scheduler("dpmpp_2m", base).config.use_karras_sigmas is False
    assert make_scheduler("PLMS", base).config.skip_prk_steps is True
    assert base.use_karras_sigmas is True
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("nope", base)
