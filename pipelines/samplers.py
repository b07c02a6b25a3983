"""Sampler names (ours, AUTOMATIC1111's, ComfyUI's) mapped to diffusers schedulers.

Importing this module must not import torch or diffusers: the server validates names with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


@dataclass(frozen=True)
class SamplerRecipe:
    scheduler_class: str
    options: dict[str, Any] = field(default_factory=dict)


_EULER = "EulerDiscreteScheduler"
_DPMPP_MULTI = "DPMSolverMultistepScheduler"
_DPMPP_SINGLE = "DPMSolverSinglestepScheduler"


def _dpmpp_multistep(algorithm: str, karras: bool) -> SamplerRecipe:
    return SamplerRecipe(
        _DPMPP_MULTI,
        {"algorithm_type": algorithm, "solver_order": 2, "use_karras_sigmas": karras},
    )


# Karras flags are always explicit so a model whose own scheduler config enables them
# does not leak that choice into samplers that should not have it.
_RECIPES: dict[str, SamplerRecipe] = {
    "euler": SamplerRecipe(_EULER, {"use_karras_sigmas": False}),
    "euler_karras": SamplerRecipe(_EULER, {"use_karras_sigmas": True}),
    "euler_a": SamplerRecipe("EulerAncestralDiscreteScheduler"),
    "heun": SamplerRecipe("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
    "heun_karras": SamplerRecipe("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    "lms": SamplerRecipe("LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    "lms_karras": SamplerRecipe("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm2": SamplerRecipe("KDPM2DiscreteScheduler", {"use_karras_sigmas": False}),
    "dpm2_karras": SamplerRecipe("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm2_a": SamplerRecipe("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": False}),
    "dpm2_a_karras": SamplerRecipe("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m": _dpmpp_multistep("dpmsolver++", karras=False),
    "dpmpp_2m_karras": _dpmpp_multistep("dpmsolver++", karras=True),
    "dpmpp_2m_sde": _dpmpp_multistep("sde-dpmsolver++", karras=False),
    "dpmpp_2m_sde_karras": _dpmpp_multistep("sde-dpmsolver++", karras=True),
    # diffusers' documented stand-in for A1111's "DPM++ SDE" (the real one needs torchsde).
    # lower_order_final=False with the default zero final sigma is refused by diffusers
    # (it logs a warning and switches to True on every set_timesteps).
    "dpmpp_sde": SamplerRecipe(
        _DPMPP_SINGLE, {"use_karras_sigmas": False, "lower_order_final": True}
    ),
    "dpmpp_sde_karras": SamplerRecipe(
        _DPMPP_SINGLE, {"use_karras_sigmas": True, "lower_order_final": True}
    ),
    "ddim": SamplerRecipe("DDIMScheduler"),
    "pndm": SamplerRecipe("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": SamplerRecipe("UniPCMultistepScheduler", {"use_karras_sigmas": False}),
    "deis": SamplerRecipe("DEISMultistepScheduler", {"use_karras_sigmas": False}),
}


SAMPLER_NAMES: tuple[str, ...] = tuple(sorted(_RECIPES))

# Keys are already normalised (see _normalise).
_ALIASES: dict[str, str] = {
    # AUTOMATIC1111 display names that do not normalise to ours
    "plms": "pndm",
    "euler_ancestral": "euler_a",
    "dpm2_ancestral": "dpm2_a",
    # ComfyUI
    "dpm_2": "dpm2",
    "dpm_2_ancestral": "dpm2_a",
    "dpm_2_a": "dpm2_a",
    "uni_pc": "unipc",
    "uni_pc_bh2": "unipc",
    "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpm_2_karras": "dpm2_karras",
    "dpm_2_ancestral_karras": "dpm2_a_karras",
    # old k-diffusion style names
    "k_euler": "euler",
    "k_euler_a": "euler_a",
    "k_euler_ancestral": "euler_a",
    "k_heun": "heun",
    "k_lms": "lms",
    "k_dpm_2": "dpm2",
    "k_dpm_2_a": "dpm2_a",
    "k_dpm_2_ancestral": "dpm2_a",
    "k_dpmpp_2m": "dpmpp_2m",
    # diffusers-ish spellings
    "dpmsolver": "dpmpp_2m",
    "dpm_solver": "dpmpp_2m",
    "dpmsolver_multistep": "dpmpp_2m",
    "dpm_solver_multistep": "dpmpp_2m",
    "unipc_multistep": "unipc",
    "deis_multistep": "deis",
}


# What the API documents as accepted (any case and punctuation of these works too).
SAMPLER_SPELLINGS: tuple[str, ...] = (
    *sorted(_RECIPES),
    *(alias for alias in _ALIASES if alias not in _RECIPES),
    "Euler a",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE Karras",
    "UniPC",
    "DDIM",
)


def _normalise(name: str) -> str:
    lowered = name.strip().lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "_", lowered).strip("_")


def _resolve(name: str) -> str:
    key = _normalise(name)
    return _ALIASES.get(key, key)


def canonical_sampler(name: str) -> str | None:
    """Our canonical name for any known spelling of a sampler, or None if unknown."""
    key = _resolve(name)
    return key if key in _RECIPES else None


def sampler_recipe(name: str) -> SamplerRecipe:
    key = _resolve(name)
    if key not in _RECIPES:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLER_NAMES)}")
    return _RECIPES[key]


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """A fresh scheduler for `name`, built from a model's original scheduler config."""
    import diffusers

    recipe = sampler_recipe(name)
    scheduler_class = getattr(diffusers, recipe.scheduler_class)
    return scheduler_class.from_config(base_config, **recipe.options)
