"""models/loras/ as a library: a folder of good, duplicate, renamed, foreign and broken
files, cataloged, filtered, checked against the loaded model and used, through the API."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

import lora_builders as build
from conftest import AppFactory, Preloaded, pixels, render, wait_done


class CountingCheck:
    """The renderer's LoRA check, counting the files it is asked about."""

    def __init__(self, check: Callable[[Path], str | None], seen: list[str]) -> None:
        self._check, self.seen = check, seen
        self.model_key = getattr(check, "model_key", None)

    def __call__(self, path: Path) -> str | None:
        self.seen.append(Path(path).name)
        return self._check(path)


class Checking(Preloaded):
    """The shared tiny renderer, offering its LoRA check as SDXLRenderer does."""

    def __init__(self, preloaded: Preloaded) -> None:
        super().__init__(preloaded._renderer)
        self.seen: list[str] = []

    @property
    def lora_compatibility(self) -> CountingCheck:
        return CountingCheck(self._renderer.lora_compatibility, self.seen)


BAD = {  # file -> what its reason says
    "other/sd15-style.safetensors": "made for SD1",
    "other/sdxl-full-size.safetensors": "LoRA maps 640->640 features, the layer 64->64",
    "broken/half-copied.safetensors": "truncated",
    "broken/download-error.safetensors": "not a safetensors file",
    "broken/loha.safetensors": "LyCORIS LoHa",
    "broken/embedding.safetensors": "textual-inversion embedding",
}


@pytest.fixture
def library(tmp_path: Path, models_dir: Path) -> Path:
    """A models dir whose loras/ holds every kind of file a self-hoster drops in."""
    root = tmp_path / "models"
    loras = root / "loras"
    loras.mkdir(parents=True)
    (root / "checkpoints").symlink_to(models_dir / "checkpoints")
    for path in (models_dir / "loras").iterdir():
        shutil.copy(path, loras / path.name)
    build.copy(loras / "tiny-lora-0.safetensors", loras / "copies" / "ink-copy.safetensors")
    tags = {"oil painting": 12, "canvas": 30, "brush strokes": 7, " ": 99}
    painterly = build.kohya_lora(
        models_dir,
        loras / "kohya" / "painterly_v2.safetensors",
        seed=11,
        metadata=build.kohya_metadata("Painterly", tags),
    )
    a1111 = {
        "description": "Thick oil paint.",
        "activation text": "painterly, impasto",
        "preferred weight": 0.8,
        "notes": "works best at 20+ steps",
        "sd version": "SDXL",
    }
    (painterly.with_suffix(".json")).write_text(json.dumps(a1111))
    Image.new("RGB", (32, 32), "blue").save(loras / "kohya" / "painterly_v2.preview.png")
    plain = build.kohya_lora(models_dir, loras / "kohya" / "plain.safetensors", seed=12)
    plain.with_suffix(".json").write_text("{not json")
    build.sd15_lora(loras / "other" / "sd15-style.safetensors")
    build.real_sdxl_lora(loras / "other" / "sdxl-full-size.safetensors")
    (loras / "broken").mkdir()
    build.truncated(painterly, loras / "broken" / "half-copied.safetensors")
    build.garbage(loras / "broken" / "download-error.safetensors")
    build.loha_lora(loras / "broken" / "loha.safetensors")
    build.embedding(loras / "broken" / "embedding.safetensors")
    return root


@pytest.fixture
def checking(tiny_renderer: Preloaded) -> Checking:
    return Checking(tiny_renderer)


def listing(client: TestClient, **query: Any) -> dict[str, dict]:
    response = client.get("/loras/available", params=query)
    assert response.status_code == 200, response.text
    return {lora["file"]: lora for lora in response.json()}


def test_a_mixed_folder_is_cataloged(
    make_client: AppFactory, library: Path, checking: Checking
) -> None:
    client = make_client(checking, models_dir=library)
    usable = listing(client)
    assert sorted(usable) == [
        "kohya/painterly_v2.safetensors",
        "kohya/plain.safetensors",
        "tiny-lora-0.safetensors",
        "tiny-lora-1.safetensors",
    ]
    assert all(
        lora["compatible"] and lora["incompatible_reason"] is None for lora in usable.values()
    )
    ink = usable["tiny-lora-0.safetensors"]
    assert ink["duplicates"] == ["copies/ink-copy.safetensors"]
    assert ink["name"] == "Tiny Ink" and ink["tags"] == ["ink", "lineart", "tiny", "test"]

    painterly = usable["kohya/painterly_v2.safetensors"]
    size = (library / "loras" / "kohya" / "painterly_v2.safetensors").stat().st_size
    assert painterly["file_size_mb"] == round(size / 2**20, 3)
    # Sidecar first, then kohya's training metadata, then the file name.
    assert painterly["name"] == "Painterly"  # ss_output_name; the sidecar names none
    assert painterly["description"] == "Thick oil paint."
    assert painterly["tags"] == ["canvas", "oil painting", "brush strokes"]
    assert painterly["activation_text"] == "painterly, impasto"
    assert painterly["preferred_weight"] == 0.8
    assert painterly["notes"] == "works best at 20+ steps"
    assert (painterly["base_model"], painterly["rank"], painterly["alpha"]) == ("SDXL", 8, 4.0)
    assert painterly["format"] == "kohya" and painterly["type"] == "lora"
    thumbnail = client.get(painterly["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"

    plain = usable["kohya/plain.safetensors"]
    assert plain["name"] == "plain" and plain["description"] == ""
    [warning] = plain["warnings"]
    assert warning.startswith("plain.json ignored: ")

    everything = listing(client, include_incompatible="true")
    assert set(everything) == set(usable) | set(BAD)
    for file, reason in BAD.items():
        assert not everything[file]["compatible"]
        assert reason in everything[file]["incompatible_reason"], everything[file]
    assert everything["other/sd15-style.safetensors"]["base_model"] == "SD1"


def test_an_incompatible_lora_is_invalid_lora_naming_id_and_reason(
    make_client: AppFactory, library: Path, checking: Checking
) -> None:
    client = make_client(checking, models_dir=library)
    everything = listing(client, include_incompatible=True)
    sd15 = everything["other/sd15-style.safetensors"]
    ink = everything["tiny-lora-0.safetensors"]
    valid = sorted(lora["id"] for lora in everything.values() if lora["compatible"])
    for route, body in (
        ("/image/generate", {"prompt": "x"}),
        ("/presets/save", {"name": "mixed"}),
    ):
        loras = [{"id": ink["id"]}, {"id": sd15["id"], "weight": 0.5}, {"id": 999}]
        response = client.post(route, json={**body, "loras": loras})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "INVALID_LORA"
        assert error["details"] == {
            "invalid_ids": [999, sd15["id"]],
            "valid_ids": valid,
            "incompatible": [{"id": sd15["id"], "reason": sd15["incompatible_reason"]}],
        }
        assert f"ID {sd15['id']} cannot be used: made for SD1" in error["message"]


def test_filters_by_tag_type_and_text(
    make_client: AppFactory, library: Path, checking: Checking
) -> None:
    client = make_client(checking, models_dir=library)
    assert set(listing(client, tag="INK")) == {"tiny-lora-0.safetensors"}
    assert set(listing(client, tag="canvas")) == {"kohya/painterly_v2.safetensors"}
    assert len(listing(client, type="style")) == 2
    assert set(listing(client, q="oil")) == {"kohya/painterly_v2.safetensors"}  # description
    assert set(listing(client, q="tiny n")) == {"tiny-lora-1.safetensors"}  # name
    assert set(listing(client, type="lycoris", include_incompatible=1)) == {
        "broken/loha.safetensors"
    }
    response = client.get("/loras/available", params={"include_incompatible": "maybe"})
    assert response.status_code == 400
    assert "include_incompatible" in response.json()["error"]["details"]["fields"]


def test_refresh_sees_new_moved_and_deleted_files_and_keeps_ids(
    make_client: AppFactory, library: Path, checking: Checking, models_dir: Path
) -> None:
    client = make_client(checking, models_dir=library)
    loras = library / "loras"
    before = listing(client)
    painterly_id = before["kohya/painterly_v2.safetensors"]["id"]

    fresh = build.kohya_lora(models_dir, loras / "new" / "fresh.safetensors", seed=13)
    build.copy(fresh, loras / "new" / "z-copy.safetensors")
    (loras / "kohya" / "painterly_v2.safetensors").rename(loras / "moved.safetensors")
    (loras / "tiny-lora-1.safetensors").unlink()
    summary = client.post("/loras/refresh").json()
    after = listing(client)
    fresh_id = after["new/fresh.safetensors"]["id"]
    tiny_1 = before["tiny-lora-1.safetensors"]["id"]
    assert (summary["added"], summary["removed"]) == ([fresh_id], [tiny_1])
    assert summary["loras"] == summary["compatible"] + len(BAD) == 4 + len(BAD)
    assert {entry["file"] for entry in summary["incompatible"]} == set(BAD)
    assert after["moved.safetensors"]["id"] == painterly_id
    assert after["moved.safetensors"]["name"] == "Painterly"
    assert after["new/fresh.safetensors"]["duplicates"] == ["new/z-copy.safetensors"]
    error = client.post("/image/generate", json={"prompt": "x", "loras": [{"id": tiny_1}]})
    assert error.json()["error"]["details"]["invalid_ids"] == [tiny_1]

    shutil.copy(models_dir / "loras" / "tiny-lora-1.safetensors", loras / "back.safetensors")
    summary = client.post("/api:_WUcacrv/loras/refresh").json()
    assert (summary["added"], summary["removed"]) == ([tiny_1], [])


def test_verdicts_are_remembered_per_model_across_restarts(
    make_client: AppFactory, library: Path, checking: Checking, models_dir: Path
) -> None:
    client = make_client(checking, models_dir=library)
    # Files that are unreadable or not LoRAs at all never reach the model check.
    assert sorted(checking.seen) == [
        "painterly_v2.safetensors",
        "plain.safetensors",
        "sd15-style.safetensors",
        "sdxl-full-size.safetensors",
        "tiny-lora-0.safetensors",
        "tiny-lora-1.safetensors",
    ]
    client.close()
    checking.seen.clear()
    build.kohya_lora(models_dir, library / "loras" / "late.safetensors", seed=14)
    client = make_client(checking, models_dir=library)
    assert checking.seen == ["late.safetensors"]
    assert "late.safetensors" in listing(client)
    assert "other/sd15-style.safetensors" not in listing(client)


def test_a_compatible_kohya_stack_renders_with_its_weights(
    make_client: AppFactory, library: Path, checking: Checking
) -> None:
    client = make_client(checking, models_dir=library)
    usable = listing(client)
    painterly = usable["kohya/painterly_v2.safetensors"]["id"]
    ink = usable["tiny-lora-0.safetensors"]["id"]
    plain = pixels(client, render(client))
    alone = pixels(client, render(client, loras=[{"id": painterly, "weight": 0.7}]))
    stacked = pixels(client, render(client, loras=[{"id": painterly}, {"id": ink}]))
    assert len({plain, alone, stacked}) == 3
    zero = render(client, loras=[{"id": painterly, "weight": 0.0}, {"id": ink, "weight": 0}])
    assert pixels(client, zero) == plain
    painterly_row = listing(client)["kohya/painterly_v2.safetensors"]
    assert (painterly_row["usage_count"], painterly_row["avg_weight"]) == (3, round(1.7 / 3, 4))


def test_a_lora_that_fails_to_load_fails_its_job_with_invalid_lora(
    make_client: AppFactory, library: Path, checking: Checking
) -> None:
    client = make_client(checking, models_dir=library)
    plain = listing(client)["kohya/plain.safetensors"]
    # Overwritten after the scan: the catalog still holds the old verdict.
    build.garbage(library / "loras" / "kohya" / "plain.safetensors")
    request_id = client.post(
        "/image/generate", json={"prompt": "x", "loras": [{"id": plain["id"]}]}
    ).json()["request_id"]
    error = wait_done(client, request_id)["error"]
    assert error["code"] == "INVALID_LORA"
    [failure] = error["details"]["incompatible"]
    assert failure == {"id": plain["id"], "reason": "not a safetensors file: no valid header"}
    assert error["details"]["invalid_ids"] == [plain["id"]]
    # Later requests for it fail at once, until a refresh looks at the file again.
    assert "kohya/plain.safetensors" not in listing(client)
    again = client.post("/image/generate", json={"prompt": "x", "loras": [{"id": plain["id"]}]})
    assert again.status_code == 400
    assert render(client)["status"] == "completed"
