"""GET /loras/available and LoRAs in generations, on the tiny model's real LoRA files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image
from starlette.testclient import TestClient

from conftest import AppFactory, pixels, render

CONTRACT_FIELDS = {
    "id",
    "name",
    "file_size_mb",
    "type",
    "personality",
    "url",
    "description",
    "tags",
    "thumbnail_url",
    "usage_count",
    "avg_weight",
}
# Beyond the contract: what a user picking a LoRA, or fixing a broken one, wants to know.
EXTRA_FIELDS = {
    "activation_text",
    "preferred_weight",
    "notes",
    "base_model",
    "rank",
    "alpha",
    "format",
    "file",
    "duplicates",
    "compatible",
    "incompatible_reason",
    "warnings",
}


def lora_library(tmp_path: Path, models_dir: Path) -> Path:
    """A private copy of the models dir, so a test can add, rename and delete LoRA files."""
    copy = tmp_path / "models"
    (copy / "loras").mkdir(parents=True)
    (copy / "checkpoints").symlink_to(models_dir / "checkpoints")
    for path in (models_dir / "loras").iterdir():
        shutil.copy(path, copy / "loras" / path.name)
    return copy


def test_available_lists_every_contract_field_from_sidecars(
    client: TestClient, models_dir: Path
) -> None:
    loras = client.get("/loras/available").json()
    assert [lora["id"] for lora in loras] == [1, 2]
    sidecar = json.loads((models_dir / "loras" / "tiny-lora-0.json").read_text())
    first = loras[0]
    assert set(first) == CONTRACT_FIELDS | EXTRA_FIELDS
    assert (first["file"], first["format"], first["rank"], first["compatible"]) == (
        "tiny-lora-0.safetensors",
        "peft",
        4,
        True,
    )
    assert first["name"] == sidecar["name"]
    assert first["tags"] == sidecar["tags"]
    assert first["description"] == sidecar["description"]
    size = (models_dir / "loras" / "tiny-lora-0.safetensors").stat().st_size
    assert first["file_size_mb"] == round(size / 2**20, 3)
    assert (first["usage_count"], first["avg_weight"]) == (0, 0.0)


def test_usage_count_and_avg_weight_follow_real_use(client: TestClient) -> None:
    render(client, loras=[{"id": 1, "weight": 0.5}])
    render(client, loras=[{"id": 1, "weight": 1.5}, {"id": 2, "weight": 1.0}])
    loras = {lora["id"]: lora for lora in client.get("/loras/available").json()}
    assert (loras[1]["usage_count"], loras[1]["avg_weight"]) == (2, 1.0)
    assert (loras[2]["usage_count"], loras[2]["avg_weight"]) == (1, 1.0)


def test_lora_changes_the_image_and_leaves_no_residue(client: TestClient) -> None:
    before = pixels(client, render(client))
    with_lora = pixels(client, render(client, loras=[{"id": 1, "weight": 1.0}]))
    stacked = pixels(client, render(client, loras=[{"id": 1}, {"id": 2, "weight": 0.7}]))
    assert len({before, with_lora, stacked}) == 3
    assert pixels(client, render(client)) == before
    assert pixels(client, render(client, loras=[{"id": 1, "weight": 1.0}])) == with_lora
    assert pixels(client, render(client, loras=[{"id": 2, "weight": 0.0}])) == before


def test_ids_survive_restart_rename_and_deletion(
    make_client: AppFactory,
    tmp_path: Path,
    models_dir: Path,
) -> None:
    library = lora_library(tmp_path, models_dir)
    client = make_client(models_dir=library)
    render(client, loras=[{"id": 2, "weight": 0.25}])
    names = {lora["id"]: lora["name"] for lora in client.get("/loras/available").json()}
    client.close()

    loras = library / "loras"
    (loras / "moved").mkdir()
    for suffix in (".safetensors", ".json"):
        (loras / f"tiny-lora-1{suffix}").rename(loras / "moved" / f"renamed{suffix}")
    (loras / "tiny-lora-0.safetensors").unlink()
    client = make_client(models_dir=library)
    listed = {lora["id"]: lora for lora in client.get("/loras/available").json()}
    assert list(listed) == [2]
    assert listed[2]["name"] == names[2] and listed[2]["usage_count"] == 1
    error = client.post("/image/generate", json={"prompt": "x", "loras": [{"id": 1}]}).json()
    assert error["error"]["code"] == "INVALID_LORA"
    assert error["error"]["details"]["valid_ids"] == [2]
    client.close()

    shutil.copy(models_dir / "loras" / "tiny-lora-0.safetensors", loras / "back.safetensors")
    client = make_client(models_dir=library)
    assert [lora["id"] for lora in client.get("/loras/available").json()] == [1, 2]


def test_preview_image_and_broken_sidecar(
    make_client: AppFactory,
    tmp_path: Path,
    models_dir: Path,
) -> None:
    library = lora_library(tmp_path, models_dir)
    Image.new("RGB", (64, 64), "red").save(library / "loras" / "tiny-lora-0.preview.png")
    (library / "loras" / "tiny-lora-1.json").write_text("{broken json")
    client = make_client(models_dir=library)
    first, second = client.get("/loras/available").json()
    assert first["thumbnail_url"] == "http://testserver/loras/1/thumbnail"
    response = client.get(first["thumbnail_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert second["name"] == "tiny-lora-1" and second["thumbnail_url"] is None
    assert client.get("/loras/2/thumbnail").status_code == 404
