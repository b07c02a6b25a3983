"""Files that once took the library (and `darkroom serve`) down: each is listed as
incompatible with its reason while the rest of the library works, in-process and in a
real server that starts with them present."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

import lora_builders as build
from conftest import AppFactory, render
from processes import ServerProcess

DEEP = 100_000
GOOD_ENTRY = '"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}'
LORA_ENTRY = '"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}'  # noqa: E501


def safetensors(path: Path, header: str) -> Path:
    """A file with this JSON header and 16 bytes of tensor data."""
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    return path


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


REASONS = {  # file name as listed -> what its reason says
    "deep.safetensors": "nested too deep",
    "deep-meta.safetensors": "nested too deep",
    "huge-shape.safetensors": "bad entry for 'a'",
    "huge-offset.safetensors": "bad entry for 'a'",
    "caf\ufffd-latin1.safetensors": "file name is not valid UTF-8",
}


def bad_files(folder: Path) -> None:
    """Write the files of REASONS into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    safetensors(folder / "deep.safetensors", f'{{"a": {nested(DEEP)}}}')
    safetensors(
        folder / "deep-meta.safetensors",
        f'{{"__metadata__": {{"x": {nested(DEEP)}}}, {GOOD_ENTRY}}}',
    )
    safetensors(
        folder / "huge-shape.safetensors",
        '{"a": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 16]}}',
    )
    safetensors(
        folder / "huge-offset.safetensors",
        '{"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1e999]}}',
    )
    raw_name = os.fsencode(folder) + b"/caf\xe9-latin1.safetensors"
    safetensors(Path(os.fsdecode(raw_name)), f"{{{LORA_ENTRY}}}")


def sidecar_files(models_dir: Path, loras: Path) -> None:
    """LoRAs whose sidecar .json is nested deep or holds a non-finite weight."""
    for seed, (stem, sidecar) in enumerate((
        ("deep-sidecar", f'{{"description": {nested(DEEP)}}}'),
        ("inf-weight", '{"preferred weight": "inf", "description": "kept"}'),
        ("nan-weight", '{"preferred weight": NaN}'),
        ("huge-weight", '{"preferred weight": 1e999}'),
    )):
        build.kohya_lora(models_dir, loras / f"{stem}.safetensors", seed=seed)
        (loras / f"{stem}.json").write_text(sidecar)


@pytest.fixture
def library(tmp_path: Path, models_dir: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "checkpoints" / "tiny-sdxl", root / "checkpoints" / "tiny-sdxl")
    shutil.copytree(models_dir / "loras", root / "loras")
    bad_files(root / "checkpoints")
    bad_files(root / "loras")
    sidecar_files(models_dir, root / "loras")
    return root


def check_listings(get: object) -> None:
    models = get("/models?include_incompatible=true").json()  # type: ignore[operator]
    loras = get("/loras/available?include_incompatible=true").json()  # type: ignore[operator]
    reasons = {f"{m['name']}.safetensors": m["incompatible_reason"] for m in models}
    lora_reasons = {lora["file"]: lora["incompatible_reason"] for lora in loras}
    for name, says in REASONS.items():
        assert says in (reasons[name] or ""), (name, reasons)
        assert says in (lora_reasons[name] or ""), (name, lora_reasons)
    default = next(m for m in models if m["default"])
    assert default["compatible"] and default["sha256"]
    usable = {lora["file"]: lora for lora in get("/loras/available").json()}  # type: ignore[operator]
    assert {"tiny-lora-0.safetensors", "tiny-lora-1.safetensors"} <= set(usable)
    for stem in ("inf-weight", "nan-weight", "huge-weight", "deep-sidecar"):
        lora = usable[f"{stem}.safetensors"]
        assert lora["preferred_weight"] is None, lora
        assert lora["warnings"], lora
    assert usable["inf-weight.safetensors"]["description"] == "kept"


def test_bad_files_are_listed_incompatible_and_the_rest_works(
    make_client: AppFactory, library: Path
) -> None:
    client = make_client(models_dir=library)
    check_listings(client.get)
    for route in ("/models/refresh", "/loras/refresh"):
        response = client.post(route)
        assert response.status_code == 200, response.text
    usable = {lora["file"]: lora["id"] for lora in client.get("/loras/available").json()}
    body = render(client, loras=[{"id": usable["tiny-lora-0.safetensors"], "weight": 0.5}])
    assert body["status"] == "completed"


def test_a_server_starts_with_bad_files_present(tmp_path: Path, library: Path) -> None:
    with (
        ServerProcess(tmp_path / "data", library, tmp_path / "serve.log") as server,
        httpx.Client(base_url=server.base, timeout=60) as http,
    ):
        check_listings(http.get)
        assert http.post("/models/refresh").status_code == 200


def test_a_symlinked_checkpoint_is_listed_under_its_link(
    make_client: AppFactory, tmp_path: Path, models_dir: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "checkpoints" / "tiny-sdxl", root / "checkpoints" / "tiny-sdxl")
    (tmp_path / "elsewhere").mkdir()
    elsewhere = safetensors(tmp_path / "elsewhere" / "target.safetensors", f"{{{LORA_ENTRY}}}")
    (root / "checkpoints" / "linked.safetensors").symlink_to(elsewhere)
    # An identical copy of the default model, sorting after it.
    shutil.copytree(root / "checkpoints" / "tiny-sdxl", root / "checkpoints" / "zz-copy")
    client: TestClient = make_client(models_dir=root)
    scan = client.post("/models/refresh").json()
    files = {entry["file"]: entry["reason"] for entry in scan["incompatible"]}
    link = str(root / "checkpoints" / "linked.safetensors")
    assert link in files and "a LoRA, not a checkpoint" in files[link]
    assert str(elsewhere) not in files
    models = {m["name"]: m for m in client.get("/models?include_incompatible=true").json()}
    assert "linked" in models
    default = models["tiny-sdxl"]
    assert default["default"] and default["sha256"] and default["hash"], models
    assert "zz-copy" not in models  # one entry per content
