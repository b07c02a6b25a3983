"""What a CPU user does to try the model library: `darkroom tiny-model` with another seed
and name (a second, different model), as a single file (AUTOMATIC1111's kind), into an
AUTOMATIC1111 models folder; and a copy of a checkpoint, which /models names."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import AppFactory, render
from pipelines.tiny import ensure_tiny_model
from server.cli import main


def tiny_model(models: Path, *flags: str) -> None:
    assert main(["tiny-model", "--models-dir", str(models), *flags]) == 0


def by_name(client) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {entry["name"]: entry for entry in client.get("/models").json()}


def assert_ordinary_modes(top: Path) -> None:
    """Readable by everyone, as files copied or downloaded are: not 0600/0700."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path}: {oct(mode)}"


@pytest.fixture
def models(tmp_path: Path, models_dir: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    return root


def test_another_seed_and_name_make_a_second_model(models: Path, make_client: AppFactory) -> None:
    tiny_model(models, "--name", "tiny-b", "--seed", "7", "--loras", "1")
    assert_ordinary_modes(models / "checkpoints" / "tiny-b")
    assert_ordinary_modes(models / "loras" / "tiny-lora-0.safetensors")
    client = make_client(models_dir=models)
    listed = by_name(client)
    assert listed["tiny-b"]["hash"] != listed["tiny-sdxl"]["hash"]
    assert listed["tiny-b"]["compatible"] and listed["tiny-b"]["duplicates"] == []
    done = render(client, settings={"model": "tiny-b"}, loras=[{"id": 1, "weight": 0.5}])
    assert done["images"][0]["metadata"]["model"] == "tiny-b"


def test_a_single_file_model_with_its_own_loras(tmp_path: Path, make_client: AppFactory) -> None:
    models = tmp_path / "models"
    ensure_tiny_model(models)
    tiny_model(models, "--single-file", "--loras", "1")
    file = models / "checkpoints" / "tiny-xl.safetensors"
    assert_ordinary_modes(file)
    client = make_client(models_dir=models)
    entry = by_name(client)["tiny-xl"]
    assert (entry["format"], entry["compatible"]) == ("single-file", True), entry
    loras = {e["file"]: e for e in client.get("/loras/available?include_incompatible=true").json()}
    xl_lora = loras["tiny-xl-lora-0.safetensors"]
    done = render(client, settings={"model": "tiny-xl"}, loras=[{"id": xl_lora["id"]}])
    assert done["images"][0]["metadata"]["model"] == "tiny-xl"


def test_a_copy_of_a_checkpoint_is_named_not_hidden(models: Path, make_client: AppFactory) -> None:
    shutil.copytree(models / "checkpoints" / "tiny-sdxl", models / "checkpoints" / "copy")
    listed = by_name(make_client(models_dir=models))
    assert "copy" not in listed  # one model: the same hash cannot name two
    assert listed["tiny-sdxl"]["duplicates"] == ["checkpoints/copy"]


def test_the_tiny_model_goes_into_an_automatic1111_folder(
    tmp_path: Path, models_dir: Path, make_client: AppFactory
) -> None:
    a1111 = tmp_path / "a1111-models"
    (a1111 / "Stable-diffusion").mkdir(parents=True)
    (a1111 / "Lora").mkdir()
    mine = a1111 / "Lora" / "mine.safetensors"
    shutil.copy(models_dir / "loras" / "tiny-lora-1.safetensors", mine)
    ensure_tiny_model(a1111)  # what `darkroom serve --model tiny` does first
    assert sorted(p.name for p in a1111.iterdir()) == ["Lora", "Stable-diffusion"]
    assert (a1111 / "Stable-diffusion" / "tiny-sdxl" / "model_index.json").is_file()
    assert (a1111 / "Lora" / "tiny-lora-0.safetensors").is_file()
    client = make_client(models_dir=a1111)
    assert by_name(client)["tiny-sdxl"]["default"]
    # The user's own LoRA is still read (a copy of tiny-lora-1: one LoRA, both files named).
    files = {
        file
        for entry in client.get("/loras/available").json()
        for file in (entry["file"], *entry["duplicates"])
    }
    assert files == {"mine.safetensors", "tiny-lora-0.safetensors", "tiny-lora-1.safetensors"}
