"""The real `webuiapi` package (mix1009/sdwebuiapi) drives a real Darkroom server process
through its own methods, as a script written for AUTOMATIC1111 would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import webuiapi
from PIL import Image

from processes import ServerProcess

SMALL = {"width": 256, "height": 256, "steps": 10}


@pytest.fixture(scope="module")
def database_url(module_engine: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return module_engine


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, database_url: str | None
) -> Iterator[webuiapi.WebUIApi]:
    data = tmp_path_factory.mktemp("a1111-data")
    with ServerProcess(data, models_dir, data / "server.log") as server:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def test_txt2img(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a lighthouse", seed=7, batch_size=2, cfg_scale=6, **SMALL)
    assert [image.size for image in result.images] == [(256, 256), (256, 256)]
    assert result.info["all_seeds"] == [7, 8]
    assert result.info["sampler_name"] == "Euler a"  # webuiapi's default
    assert result.parameters["batch_size"] == 2
    text = result.images[1].info["parameters"]
    assert text == result.info["infotexts"][1]
    assert "Sampler: Euler a, Schedule type: Uniform, CFG scale: 6.0, Seed: 8" in text


def test_txt2img_with_lora_tags(api: webuiapi.WebUIApi) -> None:
    plain = api.txt2img(prompt="a lighthouse", seed=3, **SMALL)
    tagged = api.txt2img(prompt="a lighthouse <lora:tiny-lora-0:0.8>", seed=3, **SMALL)
    missing = api.txt2img(prompt="a lighthouse <lora:no-such-lora:1>", seed=3, **SMALL)
    assert tagged.info["all_prompts"] == ["a lighthouse <lora:tiny-lora-0:0.8>"]
    text = tagged.images[0].info["parameters"]
    assert text.startswith("a lighthouse <lora:tiny-lora-0:0.8>\n")
    assert 'Lora hashes: "tiny-lora-0: ' in text
    assert tagged.images[0].tobytes() != plain.images[0].tobytes()
    # The tag is not encoded: an unknown LoRA leaves the image as without it, noted.
    assert "Lora not found: no-such-lora" in missing.images[0].info["parameters"]
    assert missing.images[0].tobytes() != tagged.images[0].tobytes()


def test_options_and_models(api: webuiapi.WebUIApi) -> None:
    models = api.get_sd_models()
    assert len(models) == 1
    model = models[0]
    assert model["model_name"] == "tiny-sdxl" and len(model["sha256"]) == 64
    assert model["title"] == f"tiny-sdxl [{model['sha256'][:10]}]" == model["title"]
    assert api.util_get_current_model() == model["title"]
    api.util_set_model(model["title"])
    options = api.get_options()
    assert options["sd_model_checkpoint"] == model["title"]
    assert options["sd_checkpoint_hash"] == model["sha256"]
    assert api.set_options({"sd_model_checkpoint": model["hash"]}) is None
    assert api.refresh_checkpoints() is None


def test_samplers_schedulers_loras(api: webuiapi.WebUIApi) -> None:
    assert "DPM++ 2M" in api.util_get_sampler_names()
    assert "karras" in api.util_get_scheduler_names()
    loras = api.get_loras()
    assert sorted(lora["name"] for lora in loras) == ["tiny-lora-0", "tiny-lora-1"]
    assert all(lora["alias"] == lora["name"] and lora["path"].endswith(".safetensors")
               for lora in loras)  # fmt: skip
    assert all(isinstance(lora["metadata"], dict) for lora in loras)
    # webuiapi has no method for it: its own session, as its get_* methods call.
    assert api.session.post(f"{api.baseurl}/refresh-loras").json() is None
    assert api.get_sd_vae() == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert api.get_cmd_flags()["api"] is True and "ram" in api.get_memory()


def test_progress_and_interrupt_during_a_render(api: webuiapi.WebUIApi) -> None:
    api.util_wait_for_ready(check_interval=0.1)  # idle: progress 0, job_count 0
    results: list[webuiapi.WebUIApiResult] = []
    call = threading.Thread(
        target=lambda: results.append(
            api.txt2img(prompt="a storm", seed=1, width=256, height=256, steps=150)
        )
    )
    call.start()
    seen = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = api.get_progress()
        if seen["progress"] > 0:
            break
        time.sleep(0.02)
    assert 0 < seen["progress"] < 1 and seen["state"]["job_count"] == 1
    assert seen["state"]["sampling_steps"] == 150 and seen["eta_relative"] >= 0
    assert api.interrupt() == {}
    call.join(60)
    assert results and results[0].images == []  # stopped before its images were made
    assert api.get_progress()["state"]["job_count"] == 0


def test_png_info(api: webuiapi.WebUIApi) -> None:
    made = api.txt2img(prompt="a cat", negative_prompt="dogs", seed=5, **SMALL)
    read = api.png_info(made.images[0])
    assert read.info == made.info["infotexts"][0]
    parameters = read.parameters
    assert parameters["Prompt"] == "a cat" and parameters["Negative prompt"] == "dogs"
    assert parameters["Seed"] == "5" and parameters["Size-1"] == "256"
    assert parameters["Model"] == "tiny-sdxl"
    assert api.png_info(Image.new("RGB", (8, 8))).info == ""


def test_turbo_steps_and_a_size_off_the_grid(api: webuiapi.WebUIApi) -> None:
    """Open WebUI sends what its user typed: 4 steps (Turbo, Lightning), 1023 wide."""
    result = api.txt2img(prompt="a lighthouse", seed=5, steps=4, width=1023, height=256)
    assert result.images[0].size == (1016, 256)
    info = result.info
    assert (info["steps"], info["width"], info["height"]) == (4, 1016, 256)
    assert "Steps: 4, " in result.images[0].info["parameters"]
