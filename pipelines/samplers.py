"""Sampler names (ours, AUTOMATIC1111's, ComfyUI's) mapped to diffusers schedulers.

Darkroom's own API takes any spelling `canonical_sampler` knows. AUTOMATIC1111's API
(`a1111_samplers`, `a1111_schedulers`, `resolve`) lists only the samplers and schedules that
diffusers runs as AUTOMATIC1111 1.10 does (same algorithm, same sigmas); anything else is
refused with `UnsupportedSampler`, never run with a stand-in.

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
# Ours (pipelines/sde_noise.py): diffusers' schedulers with per-image Brownian-tree noise.
_DPMPP_SDE = "BrownianDPMSolverSDEScheduler"
_DPMPP_MULTI_SDE = "BrownianDPMSolverMultistepScheduler"

# AUTOMATIC1111's schedules that diffusers reproduces sigma for sigma (tests/pipelines/
# test_samplers_schedules.py checks each against A1111's formulas): "uniform" (and "normal",
# the same sigmas) is the model's sigmas at linspace(999, 0, n), which is diffusers'
# "linspace" spacing; karras, exponential and beta are the flags below, and need "linspace"
# spacing too, because diffusers takes sigma_max/sigma_min from the spaced sigmas (SDXL's
# own "leading" spacing starts them at t=901, sigma 8.4 instead of 14.6).
_SCHEDULE_OPTIONS: dict[str, dict[str, Any]] = {
    "": {"timestep_spacing": "linspace"},
    "karras": {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    "exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "beta": {"timestep_spacing": "linspace", "use_beta_sigmas": True},
}
_FLAGS_OFF = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


def _k_sampler(scheduler_class: str, schedule: str = "", **options: Any) -> SamplerRecipe:
    """A k-diffusion-style sampler on one of A1111's schedules. Every flag is explicit so a
    model whose own scheduler config enables one does not leak it into other samplers."""
    return SamplerRecipe(scheduler_class, {**_FLAGS_OFF, **_SCHEDULE_OPTIONS[schedule], **options})


def _dpmpp_multistep(algorithm: str, karras: bool, **options: Any) -> SamplerRecipe:
    """Darkroom's original DPM++ 2M recipes: the model's own timestep spacing (with Karras
    sigmas that spacing does not matter: diffusers' DPM++ takes the full sigma range)."""
    scheduler = _DPMPP_MULTI_SDE if algorithm.startswith("sde") else _DPMPP_MULTI
    return SamplerRecipe(
        scheduler,
        {
            "algorithm_type": algorithm,
            "solver_order": 2,
            **_FLAGS_OFF,
            "use_karras_sigmas": karras,
            **options,
        },
    )


def _dpmpp_2m(algorithm: str, schedule: str, **options: Any) -> SamplerRecipe:
    scheduler = _DPMPP_MULTI_SDE if algorithm.startswith("sde") else _DPMPP_MULTI
    return _k_sampler(scheduler, schedule, algorithm_type=algorithm, solver_order=2, **options)


_RECIPES: dict[str, SamplerRecipe] = {
    "euler": _k_sampler(_EULER),
    "euler_a": _k_sampler("EulerAncestralDiscreteScheduler"),
    "heun": _k_sampler("HeunDiscreteScheduler"),
    "lms": _k_sampler("LMSDiscreteScheduler"),
    "dpm2": _k_sampler("KDPM2DiscreteScheduler"),
    "dpm2_a": _k_sampler("KDPM2AncestralDiscreteScheduler"),
    # k-diffusion's sample_dpmpp_sde (r=1/2, eta=1) with its Brownian-tree noise.
    "dpmpp_sde": _k_sampler(_DPMPP_SDE),
    "dpmpp_2m": _dpmpp_multistep("dpmsolver++", karras=False),
    "dpmpp_2m_sde": _dpmpp_multistep("sde-dpmsolver++", karras=False),
    "dpmpp_2m_sde_heun": _dpmpp_multistep("sde-dpmsolver++", karras=False, solver_type="heun"),
    "ddim": SamplerRecipe("DDIMScheduler"),
    "pndm": SamplerRecipe("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": SamplerRecipe("UniPCMultistepScheduler", {**_FLAGS_OFF}),
    "deis": SamplerRecipe("DEISMultistepScheduler", {**_FLAGS_OFF}),
}
for _schedule in ("karras", "exponential", "beta"):
    for _name, _class in (
        ("euler", _EULER),
        ("heun", "HeunDiscreteScheduler"),
        ("lms", "LMSDiscreteScheduler"),
        ("dpm2", "KDPM2DiscreteScheduler"),
        ("dpm2_a", "KDPM2AncestralDiscreteScheduler"),
        ("dpmpp_sde", _DPMPP_SDE),
    ):
        _RECIPES[f"{_name}_{_schedule}"] = _k_sampler(_class, _schedule)
    _RECIPES[f"dpmpp_2m_{_schedule}"] = _dpmpp_2m("dpmsolver++", _schedule)
    _RECIPES[f"dpmpp_2m_sde_{_schedule}"] = _dpmpp_2m("sde-dpmsolver++", _schedule)
    _RECIPES[f"dpmpp_2m_sde_heun_{_schedule}"] = _dpmpp_2m(
        "sde-dpmsolver++", _schedule, solver_type="heun"
    )


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
    "k_dpmpp_sde": "dpmpp_sde",
    "k_dpmpp_2m_sde": "dpmpp_2m_sde",
    "k_dpmpp_2m_sde_heun": "dpmpp_2m_sde_heun",
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

    from pipelines import sde_noise

    recipe = sampler_recipe(name)
    scheduler_class = getattr(sde_noise, recipe.scheduler_class, None) or getattr(
        diffusers, recipe.scheduler_class
    )
    return scheduler_class.from_config(base_config, **recipe.options)


# --- AUTOMATIC1111 1.10's vocabulary


class UnsupportedSampler(ValueError):
    """An AUTOMATIC1111 sampler or scheduler that Darkroom does not know or cannot run as
    AUTOMATIC1111 does. str() is a message fit for the client."""


@dataclass(frozen=True)
class A1111Sampler:
    name: str
    aliases: tuple[str, ...]
    options: dict[str, Any]
    # Darkroom's canonical name per A1111 schedule; None: a timestep sampler (DDIM, PLMS),
    # for which AUTOMATIC1111 ignores the scheduler and so does Darkroom.
    by_schedule: dict[str, str] | None
    default_schedule: str = "uniform"


def _ksched(base: str, uniform: bool = True) -> dict[str, str]:
    names = {s: f"{base}_{s}" for s in ("karras", "exponential", "beta")}
    if uniform:
        names["uniform"] = names["normal"] = base
    return names


_SDE = {"brownian_noise": True}
# In /sdapi/v1/samplers' order. Not listed (and refused), because diffusers has no faithful
# equivalent: DPM++ 2S a (diffusers' single-step DPM++ is not ancestral), DPM++ 3M SDE
# (A1111 discards the next-to-last sigma and draws Brownian noise; diffusers' third-order
# SDE update takes plain noise and no such schedule), DPM2 and DPM2 a (A1111 discards the
# next-to-last sigma, diffusers' KDPM2 cannot), DPM fast, DPM adaptive, Restart, DDIM CFG++
# (not in diffusers), UniPC (A1111 runs bh1, order 3 on a continuous-time schedule;
# diffusers' UniPC rounds to discrete timesteps), LCM (diffusers' LCMScheduler is the LCM
# models' skipping schedule with boundary scalings, not k-diffusion's sample_lcm).
_A1111_SAMPLERS: tuple[A1111Sampler, ...] = (
    A1111Sampler(
        "DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": "karras"},
        _ksched("dpmpp_2m", uniform=False), "karras",
    ),
    A1111Sampler(
        "DPM++ SDE", ("k_dpmpp_sde",),
        {"scheduler": "karras", "second_order": True, **_SDE}, _ksched("dpmpp_sde"), "karras",
    ),
    A1111Sampler(
        "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), {"scheduler": "exponential", **_SDE},
        _ksched("dpmpp_2m_sde", uniform=False), "exponential",
    ),
    A1111Sampler(
        "DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",),
        {"scheduler": "exponential", **_SDE, "solver_type": "heun"},
        _ksched("dpmpp_2m_sde_heun", uniform=False), "exponential",
    ),
    A1111Sampler(
        "Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True},
        {"uniform": "euler_a", "normal": "euler_a"},  # diffusers' Euler a has no sigma flags
    ),
    A1111Sampler("Euler", ("k_euler",), {}, _ksched("euler")),
    A1111Sampler("LMS", ("k_lms",), {}, _ksched("lms")),
    A1111Sampler("Heun", ("k_heun",), {"second_order": True}, _ksched("heun")),
    A1111Sampler("DDIM", ("ddim",), {}, None),
    A1111Sampler("PLMS", ("plms",), {}, None),
)  # fmt: skip
_TIMESTEP_SAMPLERS = {"DDIM": "ddim", "PLMS": "pndm"}


@dataclass(frozen=True)
class A1111Schedule:
    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False


# In /sdapi/v1/schedulers' order. Not listed (and refused): polyexponential, kl_optimal,
# align_your_steps (diffusers has no such sigmas); sgm_uniform and simple (diffusers'
# "trailing" spacing rounds to whole timesteps: up to 2% off A1111's sigmas); ddim (A1111
# strides by 1000 // steps and can run more steps than asked).
_A1111_SCHEDULES: tuple[A1111Schedule, ...] = (
    A1111Schedule("automatic", "Automatic"),
    A1111Schedule("uniform", "Uniform", need_inner_model=True),
    A1111Schedule("karras", "Karras", default_rho=7.0),
    A1111Schedule("exponential", "Exponential"),
    A1111Schedule("normal", "Normal", need_inner_model=True),
    A1111Schedule("beta", "Beta", need_inner_model=True),
)
_REFUSED_SCHEDULES = {
    "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal", "align_your_steps": "Align Your Steps", "simple": "Simple",
    "ddim": "DDIM",
}  # fmt: skip
_REFUSED_SAMPLERS = (
    "DPM++ 2S a", "DPM++ 3M SDE", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
    "DDIM CFG++", "UniPC", "LCM",
)  # fmt: skip


def _options_as_a1111(options: dict[str, Any]) -> dict[str, str]:
    # A1111's SamplerItem declares options: dict[str, str]; pydantic turns True into "True".
    return {key: str(value) for key, value in options.items()}


def a1111_samplers() -> list[dict[str, Any]]:
    """What /sdapi/v1/samplers answers: the samplers Darkroom runs as AUTOMATIC1111 does."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": _options_as_a1111(s.options)}
        for s in _A1111_SAMPLERS
    ]


def a1111_schedulers() -> list[dict[str, Any]]:
    """What /sdapi/v1/schedulers answers: the schedules Darkroom reproduces exactly."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": None if s.aliases is None else list(s.aliases),
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in _A1111_SCHEDULES
    ]


def _sampler_lookup() -> dict[str, A1111Sampler]:
    table: dict[str, A1111Sampler] = {}
    for sampler in _A1111_SAMPLERS:
        for spelling in (sampler.name, *sampler.aliases):
            table[_normalise(spelling)] = sampler
    return table


_SAMPLER_LOOKUP = _sampler_lookup()
_SCHEDULE_LOOKUP = {
    _normalise(spelling): schedule.name
    for schedule in _A1111_SCHEDULES
    for spelling in (schedule.name, schedule.label, *(schedule.aliases or ()))
}
_REFUSED_SCHEDULE_LOOKUP = {
    _normalise(spelling): name
    for name, label in _REFUSED_SCHEDULES.items()
    for spelling in (name, label, *(("SGMUniform",) if name == "sgm_uniform" else ()))
}
_REFUSED_SAMPLER_LOOKUP = {_normalise(name): name for name in _REFUSED_SAMPLERS}


def _split_schedule_suffix(name: str) -> tuple[str, str | None]:
    """A legacy combined name ("DPM++ 2M Karras") as (sampler, schedule), as A1111 splits
    it: on a scheduler label or alias at its end. Known samplers are never split."""
    if _normalise(name) in _SAMPLER_LOOKUP:
        return name, None
    stripped = name.strip()
    spellings = [
        (spelling, schedule.name)
        for schedule in _A1111_SCHEDULES
        for spelling in (schedule.label, *(schedule.aliases or ()))
    ] + [
        (spelling, key)
        for key, label in _REFUSED_SCHEDULES.items()
        for spelling in (label, *(("SGMUniform",) if key == "sgm_uniform" else ()))
    ]
    for spelling, schedule_name in spellings:
        if stripped.lower().endswith(" " + spelling.lower()):
            return stripped[: -len(spelling) - 1], schedule_name
    return name, None


def resolve(sampler_name: str, scheduler: str | None = None) -> str:
    """Darkroom's canonical sampler name for AUTOMATIC1111's `sampler_name` (name, alias or
    legacy combined name such as "DPM++ 2M Karras") and `scheduler` (name or label; None or
    "automatic": the sampler's default). A suffix in the name wins over `scheduler`, as in
    AUTOMATIC1111. Raises UnsupportedSampler for what is not listed by a1111_samplers() /
    a1111_schedulers() or a combination that diffusers cannot run as AUTOMATIC1111 does."""
    base, suffix = _split_schedule_suffix(sampler_name)
    sampler = _SAMPLER_LOOKUP.get(_normalise(base))
    if sampler is None:
        refused = _REFUSED_SAMPLER_LOOKUP.get(_normalise(base))
        listed = ", ".join(s.name for s in _A1111_SAMPLERS)
        if refused is not None:
            raise UnsupportedSampler(
                f"sampler {refused!r} is not available: Darkroom runs only samplers that "
                f"diffusers reproduces faithfully; available: {listed}"
            )
        raise UnsupportedSampler(f"unknown sampler {sampler_name!r}; available: {listed}")

    requested = suffix if suffix is not None else (scheduler or "automatic")
    schedule = _SCHEDULE_LOOKUP.get(_normalise(requested))
    if schedule is None:
        listed = ", ".join(s.name for s in _A1111_SCHEDULES)
        if _normalise(requested) in _REFUSED_SCHEDULE_LOOKUP:
            raise UnsupportedSampler(
                f"scheduler {requested!r} is not available: diffusers cannot reproduce its "
                f"sigmas; available: {listed}"
            )
        raise UnsupportedSampler(f"unknown scheduler {requested!r}; available: {listed}")

    if sampler.by_schedule is None:  # DDIM, PLMS: AUTOMATIC1111 ignores the scheduler
        return _TIMESTEP_SAMPLERS[sampler.name]
    if schedule == "automatic":
        schedule = sampler.default_schedule
    name = sampler.by_schedule.get(schedule)
    if name is None:
        usable = sorted(sampler.by_schedule)
        raise UnsupportedSampler(
            f"sampler {sampler.name!r} cannot run with scheduler {schedule!r} as "
            f"AUTOMATIC1111 does; use one of: automatic, {', '.join(usable)}"
        )
    return name
