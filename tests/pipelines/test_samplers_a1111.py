"""AUTOMATIC1111's sampler and scheduler vocabulary: what is listed, how names resolve,
what is refused."""

from __future__ import annotations

import pytest

from pipelines.samplers import (
    SAMPLER_NAMES,
    UnsupportedSampler,
    a1111_samplers,
    a1111_schedulers,
    canonical_sampler,
    resolve,
)

LISTED = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "Euler a", "Euler", "LMS",
    "Heun", "DDIM", "PLMS",
]  # fmt: skip
DEFAULTS = {
    ("DPM++ 2M", None): "dpmpp_2m_karras",
    ("DPM++ SDE", None): "dpmpp_sde_karras",
    ("DPM++ 2M SDE", None): "dpmpp_2m_sde_exponential",
    ("DPM++ 2M SDE Heun", None): "dpmpp_2m_sde_heun_exponential",
    ("Euler a", "automatic"): "euler_a",
    ("Euler", "Automatic"): "euler",
    ("LMS", None): "lms",
    ("Heun", None): "heun",
    ("DDIM", None): "ddim",
    ("PLMS", None): "pndm",
}
RESOLVED = {
    ("DPM++ 2M", "karras"): "dpmpp_2m_karras",
    ("DPM++ 2M", "Exponential"): "dpmpp_2m_exponential",
    ("k_dpmpp_2m", "beta"): "dpmpp_2m_beta",
    ("k_euler_a", None): "euler_a",
    ("k_euler_ancestral", "uniform"): "euler_a",
    ("Euler", "karras"): "euler_karras",
    ("Euler", "normal"): "euler",
    ("euler", "Uniform"): "euler",
    ("DPM++ SDE", "exponential"): "dpmpp_sde_exponential",
    ("DPM++ SDE", "uniform"): "dpmpp_sde",
    ("DPM++ 2M SDE", "Karras"): "dpmpp_2m_sde_karras",
    ("k_dpmpp_2m_sde_heun", "beta"): "dpmpp_2m_sde_heun_beta",
    ("Heun", "exponential"): "heun_exponential",
    ("LMS", "karras"): "lms_karras",
    # AUTOMATIC1111 ignores the scheduler of its timestep samplers, and so do we
    ("DDIM", "karras"): "ddim",
    ("PLMS", "exponential"): "pndm",
}
LEGACY = {
    "DPM++ 2M Karras": "dpmpp_2m_karras",
    "DPM++ SDE Karras": "dpmpp_sde_karras",
    "DPM++ 2M SDE Karras": "dpmpp_2m_sde_karras",
    "DPM++ 2M SDE Exponential": "dpmpp_2m_sde_exponential",
    "DPM++ 2M SDE Heun Karras": "dpmpp_2m_sde_heun_karras",
    "LMS Karras": "lms_karras",
    "Euler Beta": "euler_beta",
}


def test_samplers_list_names_aliases_and_a1111_options() -> None:
    listed = a1111_samplers()
    assert [s["name"] for s in listed] == LISTED
    by_name = {s["name"]: s for s in listed}
    assert by_name["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert by_name["DPM++ 2M"] == {
        "name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}
    }  # fmt: skip
    # A1111 declares options as dict[str, str]: pydantic answers True as "True".
    assert by_name["DPM++ SDE"]["options"] == {
        "scheduler": "karras", "second_order": "True", "brownian_noise": "True"
    }  # fmt: skip
    assert by_name["DPM++ 2M SDE"]["options"]["scheduler"] == "exponential"
    assert by_name["DPM++ 2M SDE Heun"]["options"]["solver_type"] == "heun"
    for sampler in listed:
        assert set(sampler) == {"name", "aliases", "options"}
        assert all(isinstance(v, str) for v in sampler["options"].values())


def test_schedulers_list_only_what_diffusers_reproduces() -> None:
    listed = a1111_schedulers()
    assert [s["name"] for s in listed] == [
        "automatic", "uniform", "karras", "exponential", "normal", "beta"
    ]  # fmt: skip
    assert listed[2] == {
        "name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
        "need_inner_model": False,
    }  # fmt: skip
    assert listed[0]["label"] == "Automatic" and listed[0]["default_rho"] == -1.0
    assert {s["name"]: s["need_inner_model"] for s in listed}["beta"] is True


@pytest.mark.parametrize(("sampler", "scheduler"), list(DEFAULTS), ids=str)
def test_each_sampler_resolves_with_its_default_scheduler(sampler: str, scheduler: str) -> None:
    assert resolve(sampler, scheduler) == DEFAULTS[sampler, scheduler]


def test_every_listed_combination_resolves_to_an_accepted_canonical_name() -> None:
    assert {args: resolve(*args) for args in RESOLVED} == RESOLVED
    for sampler in LISTED:
        for schedule in a1111_schedulers():
            try:
                name = resolve(sampler, schedule["label"])
            except UnsupportedSampler:
                continue
            # and the Darkroom API accepts it as is
            assert name in SAMPLER_NAMES and canonical_sampler(name) == name


def test_legacy_combined_names_split_on_their_scheduler_suffix() -> None:
    assert {name: resolve(name) for name in LEGACY} == LEGACY
    # the suffix wins over a separate scheduler, as in AUTOMATIC1111
    assert resolve("DPM++ 2M Karras", "exponential") == "dpmpp_2m_karras"
    # the Darkroom API keeps accepting them too
    assert {name: canonical_sampler(name) for name in LEGACY} == LEGACY


@pytest.mark.parametrize(
    "sampler", ["DPM++ 2S a", "DPM++ 3M SDE", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive",
                "Restart", "DDIM CFG++", "UniPC", "LCM", "DPM2 a Karras"],
)  # fmt: skip
def test_samplers_diffusers_cannot_run_faithfully_are_refused(sampler: str) -> None:
    with pytest.raises(UnsupportedSampler, match="not available.*faithfully") as error:
        resolve(sampler)
    assert "DPM++ 2M" in str(error.value)  # says what is available


@pytest.mark.parametrize(
    "scheduler",
    ["polyexponential", "SGM Uniform", "SGMUniform", "kl_optimal", "Align Your Steps",
     "simple", "ddim"],
)  # fmt: skip
def test_schedules_diffusers_cannot_reproduce_are_refused(scheduler: str) -> None:
    with pytest.raises(UnsupportedSampler, match="cannot reproduce"):
        resolve("Euler", scheduler)
    with pytest.raises(UnsupportedSampler, match="cannot reproduce"):
        resolve("DPM++ 2M", scheduler)
    assert scheduler not in {s["name"] for s in a1111_schedulers()}


def test_combinations_diffusers_cannot_run_are_refused_with_the_alternatives() -> None:
    # diffusers' DPM++ 2M spaces "linspace" timesteps differently from A1111's uniform
    with pytest.raises(UnsupportedSampler, match="automatic, beta, exponential, karras"):
        resolve("DPM++ 2M", "uniform")
    # diffusers' Euler a has no Karras, exponential or beta sigmas
    with pytest.raises(UnsupportedSampler, match="'Euler a' cannot run with scheduler 'karras'"):
        resolve("Euler a", "Karras")
    with pytest.raises(UnsupportedSampler, match="cannot run"):
        resolve("DPM++ 2M SDE", "normal")


def test_unknown_names_are_a_value_error() -> None:
    for sampler, scheduler in (("nope", None), ("", None), ("Euler", "nope")):
        with pytest.raises(ValueError, match="unknown"):
            resolve(sampler, scheduler)


def test_darkroom_names_of_new_combinations_are_accepted() -> None:
    for name in (
        "dpmpp_2m_exponential", "euler_exponential", "dpmpp_2m_sde_exponential",
        "dpmpp_sde_exponential", "dpmpp_2m_sde_heun", "euler_beta", "dpmpp_2m_sde_heun_karras",
    ):  # fmt: skip
        assert canonical_sampler(name) == name
    assert canonical_sampler("k_dpmpp_2m_sde_heun") == "dpmpp_2m_sde_heun"
