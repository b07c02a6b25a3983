"""The model library through the API: checkpoints found in either folder layout, listed with
their hashes, chosen per request, reported per image; broken and unsafe files refused."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from starlette.testclient import TestClient

from checkpoint_builders import build_tiny_xl, to_single_file
from conftest import AppFactory, generate, pixels, render, wait_done


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    """Every test here runs on SQLite and on PostgreSQL."""
    return each_engine


@pytest.fixture(scope="module")
def xl(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny-xl-blocks (SDXL's block layout at tiny widths) as a folder and a single file,
    and files that must not load: one whose VAE key is renamed (the header shows it), one
    missing a UNet layer's weights (only loading shows it), a pickle."""
    root = tmp_path_factory.mktemp("xl")
    folder = build_tiny_xl(root / "xl-folder")
    file = to_single_file(folder, root / "xl-file.safetensors")
    state = load_file(file)
    key = "first_stage_model.decoder.conv_out.weight"
    state["first_stage_model.decoder.conv_outs.weight"] = state.pop(key)
    save_file(state, str(root / "renamed.safetensors"))
    state["first_stage_model.decoder.conv_out.weight"] = state.pop(
        "first_stage_model.decoder.conv_outs.weight"
    )
    layer = ".input_blocks.4.1.transformer_blocks.0.attn1"
    save_file({k: v for k, v in state.items() if layer not in k}, str(root / "missing.safetensors"))
    (root / "old.ckpt").write_bytes(b"\x80\x04 never unpickled")
    return {
        "folder": folder,
        "file": file,
        "renamed": root / "renamed.safetensors",
        "missing": root / "missing.safetensors",
        "pickle": root / "old.ckpt",
    }


def models_tree(root: Path, base: Path, xl: dict[str, Path], a1111: bool = False) -> Path:
    """A models folder holding the tiny default model, its LoRAs and the xl files, in
    Darkroom's layout or AUTOMATIC1111's (the xl files in a subfolder; the tiny model stays
    in checkpoints/, where `--model tiny` builds it)."""
    shutil.copytree(base / "checkpoints" / "tiny-sdxl", root / "checkpoints" / "tiny-sdxl")
    shutil.copytree(base / "loras", root / ("Lora" if a1111 else "loras"))
    sub = root / "Stable-diffusion" / "sdxl" if a1111 else root / "checkpoints"
    shutil.copytree(xl["folder"], sub / "xl-folder")
    for name in ("file", "renamed", "missing", "pickle"):
        shutil.copy(xl[name], sub / xl[name].name)
    return root


@pytest.fixture
def library(tmp_path: Path, models_dir: Path, xl: dict[str, Path]) -> Path:
    return models_tree(tmp_path / "models", models_dir, xl)


def by_name(client: TestClient, include_incompatible: bool = True) -> dict[str, dict]:
    query = "?include_incompatible=true" if include_incompatible else ""
    response = client.get(f"/models{query}")
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("a1111", [False, True], ids=["darkroom-layout", "a1111-layout"])
def test_checkpoints_are_listed_with_their_hashes_in_either_layout(
    tmp_path: Path, models_dir: Path, xl: dict[str, Path], make_client: AppFactory, a1111: bool
) -> None:
    client = make_client(models_dir=models_tree(tmp_path / "models", models_dir, xl, a1111))
    models = by_name(client)
    assert set(models) == {"tiny-sdxl", "xl-folder", "xl-file", "renamed", "missing", "old"}
    file = models["xl-file"]
    assert file["sha256"] == sha256(xl["file"]) and file["hash"] == file["sha256"][:10]
    assert file["title"] == f"xl-file [{file['hash']}]"
    assert (file["format"], file["base_model"], file["compatible"]) == ("single-file", "SDXL", True)
    assert file["file_size_mb"] == round(xl["file"].stat().st_size / 2**20, 3)
    assert models["xl-folder"]["format"] == "diffusers" and models["xl-folder"]["compatible"]
    assert models["tiny-sdxl"]["default"] and not models["xl-file"]["default"]
    assert models["tiny-sdxl"]["loaded"]
    assert not models["old"]["compatible"]
    assert "arbitrary code" in models["old"]["incompatible_reason"]
    assert "conv_out.weight is missing" in models["renamed"]["incompatible_reason"]
    # Listed without the flag: only what can be chosen; the LoRAs from loras/ or Lora/.
    assert "old" not in by_name(client, include_incompatible=False)
    assert len(client.get("/loras/available").json()) == 2
    assert client.get("/api:_WUcacrv/models").status_code == 200


def test_each_request_picks_its_model_by_name_title_or_hash(
    library: Path, make_client: AppFactory, xl: dict[str, Path]
) -> None:
    client = make_client(models_dir=library)
    entry = by_name(client)["xl-folder"]
    default = render(client, settings={"seed": 5})
    first = render(client, settings={"seed": 5, "model": "xl-folder"})
    assert pixels(client, first) != pixels(client, default)
    # Same request, same seed, same model: the same pixels, whatever ran in between.
    for name in (entry["title"], entry["hash"]):
        again = render(client, settings={"seed": 5, "model": name})
        assert pixels(client, again) == pixels(client, first)
    assert pixels(client, render(client, settings={"seed": 5})) == pixels(client, default)
    # The single file converted from the folder renders the folder's pixels.
    single = render(client, settings={"seed": 5, "model": "xl-file"})
    assert pixels(client, single) == pixels(client, first)

    meta = first["images"][0]["metadata"]
    assert (meta["model"], meta["model_hash"]) == ("xl-folder", entry["hash"])
    default_meta = default["images"][0]["metadata"]
    assert default_meta["model"] == "tiny-sdxl" and default_meta["model_hash"]
    png = Image.open(io.BytesIO(client.get(first["images"][0]["url"]).content))
    assert f"Model hash: {entry['hash']}, Model: xl-folder" in png.text["parameters"]
    history = client.get("/generations/history?per_page=100").json()["items"]
    assert {item["settings"].get("model") for item in history} == {
        None,
        entry["title"],
        by_name(client)["xl-file"]["title"],
    }
    assert by_name(client)["xl-file"]["loaded"]  # the last one rendered (one held on the CPU)


def test_unknown_or_unusable_models_are_validation_errors(
    library: Path, make_client: AppFactory
) -> None:
    client = make_client(models_dir=library)
    for name, why in (("nope", "unknown model"), ("old", "arbitrary code"), ("renamed", "SDXL")):
        response = client.post("/image/generate", json={"prompt": "x", "settings": {"model": name}})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert why in error["details"]["fields"]["settings.model"]
        assert "xl-folder" in error["details"]["available"]
        assert "old" not in error["details"]["available"]


def test_a_model_that_fails_to_load_fails_its_job_only(
    library: Path, make_client: AppFactory
) -> None:
    client = make_client(models_dir=library)
    broken = wait_done(client, generate(client, settings={"model": "missing"})["request_id"])
    assert broken["status"] == "failed"
    error = broken["error"]
    assert error["code"] == "PROVIDER_ERROR"
    assert error["details"]["reason"] == "model_load_failed"
    assert "missing" in error["details"]["detail"] and "Traceback" not in error["details"]["detail"]
    assert client.get("/health").status_code == 200
    render(client, settings={"model": "xl-folder"})
    render(client)


def test_loras_are_checked_against_the_requested_model(
    library: Path, make_client: AppFactory
) -> None:
    client = make_client(models_dir=library)
    render(client, loras=[{"id": 1, "weight": 0.5}])  # the tiny LoRAs fit the tiny model
    response = client.post(
        "/image/generate",
        json={"prompt": "x", "settings": {"model": "xl-folder"}, "loras": [{"id": 1}]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_LORA"
    assert error["details"]["incompatible"][0]["id"] == 1


def test_invalid_lora_lists_the_loras_that_fit_the_requested_model(
    library: Path, make_client: AppFactory, xl: dict[str, Path]
) -> None:
    """valid_ids answer "which could I use with this model?", not with the default one."""
    from diffusers import UNet2DConditionModel

    from pipelines.tiny import write_lora

    write_lora(UNet2DConditionModel.from_pretrained(xl["folder"] / "unet"), library / "loras", 7)
    client = make_client(models_dir=library)
    listed = client.get("/loras/available?include_incompatible=true").json()
    ids = {entry["file"]: entry["id"] for entry in listed}
    xl_lora = ids["tiny-lora-7.safetensors"]
    response = client.post(
        "/image/generate",
        json={"prompt": "x", "settings": {"model": "xl-folder"}, "loras": [{"id": 1}]},
    )
    assert response.status_code == 400, response.text
    details = response.json()["error"]["details"]
    assert details["invalid_ids"] == [1] and details["valid_ids"] == [xl_lora]


def test_presets_keep_the_model(library: Path, make_client: AppFactory) -> None:
    client = make_client(models_dir=library)
    entry = by_name(client)["xl-file"]
    saved = client.post(
        "/presets/save", json={"name": "xl", "settings": {"model": entry["hash"], "steps": 12}}
    )
    assert saved.status_code == 201, saved.text
    assert saved.json()["settings"] == {"model": entry["title"], "steps": 12}
    assert client.get("/presets").json()[0]["settings"]["model"] == entry["title"]
    bad = client.post("/presets/save", json={"name": "bad", "settings": {"model": "nope"}})
    assert bad.json()["error"]["code"] == "VALIDATION_ERROR"
