"""Both remote providers on SQLite and on PostgreSQL (a fresh database per test): a remote
job completes on a node of a shared database exactly as on one box: images in the vault,
`metadata.provider`, charged once, its hold released (so a sixth job is not refused by the
5-active limit). rundiffusion renders image-to-image jobs too: an img2img and an
inpainting through the remote's /sdapi/v1/img2img, a hires fix through its txt2img (fal's:
test_fal_image_jobs)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fal_double import FalDouble
from PIL import Image
from remote_fixtures import FAST, alice, credits, fal, fal_client, wait_for
from test_fal_image_jobs import (
    SIZE,
    STEPS,
    halves,
    inpainting,
    png,
    square_mask,
    submit,
    vault_image,
)

from conftest import SMALL, AppFactory, generate, wait_done
from fakes import NeverLoads
from pipelines import image_ops
from processes import ServerProcess
from server.contract import credits_for
from server.jobs import image_jobs

__all__ = ["fal"]  # the fixture

COST = credits_for(SMALL["width"], SMALL["height"], SMALL["steps"], 1)


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


@pytest.fixture(scope="module")
def a1111(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second Darkroom serving AUTOMATIC1111's API (on its own SQLite file)."""
    path = tmp_path_factory.mktemp("a1111")
    database = f"sqlite:{path / 'remote.sqlite3'}"
    with ServerProcess(path, models_dir, path / "remote.log", "--database", database) as remote:
        yield remote


def stored(client, request_id: str) -> dict:  # type: ignore[no-untyped-def]
    return client.app.state.darkroom.store.generation(request_id)


def test_fal_jobs_complete_charge_once_and_release_their_holds(
    make_client: AppFactory, fal: FalDouble, database_url: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    client = fal_client(make_client, fal, node_id="node-1")
    headers = alice(client)
    first = [
        generate(client, f"job {i}", headers, settings={"seed": 10 + i},
                 options={"provider": "fal"})["request_id"]
        for i in range(5)
    ]  # fmt: skip
    for i, request_id in enumerate(first):
        body = wait_done(client, request_id, headers=headers)
        assert body["status"] == "completed", body
        (image,) = body["images"]
        assert image["metadata"]["provider"] == "fal" and image["metadata"]["seed"] == 10 + i
        assert image["vault_url"].startswith("http://testserver/vault/")
        assert client.get(image["vault_url"]).status_code == 200
        assert body["credits_used"] == pytest.approx(COST, abs=1e-4)
        if database_url is not None:  # watched (leased) by the node that admitted it
            assert stored(client, request_id)["node_id"] == "node-1"
    assert credits(client, headers)["held"] == 0
    assert credits(client, headers)["balance"] == pytest.approx(10 - 5 * COST, abs=1e-4)
    # the five finished jobs hold no slot: a sixth is taken and completes
    sixth = generate(client, "job 6", headers, options={"provider": "fal"})["request_id"]
    assert wait_done(client, sixth, headers=headers)["status"] == "completed"
    assert credits(client, headers) == pytest.approx(
        {"unlimited": False, "balance": 10 - 6 * COST, "held": 0.0, "available": 10 - 6 * COST},
        abs=1e-4,
    )
    assert len(fal.submits) == 6
    assert "finished after it was failed" not in caplog.text
    metrics = client.get("/metrics").text
    assert "darkroom_provider_jobs_total" in metrics and 'provider="fal"' in metrics


def test_rundiffusion_jobs_complete_and_charge_once(
    make_client: AppFactory, a1111: ServerProcess, database_url: str | None
) -> None:
    client = make_client(rundiffusion_url=a1111.base, **FAST)
    headers = alice(client)
    submitted = generate(
        client, "a red fox", headers, settings={"seed": 77}, options={"provider": "rundiffusion"}
    )
    body = wait_done(client, submitted["request_id"], headers=headers)
    assert body["status"] == "completed", body
    (image,) = body["images"]
    assert image["metadata"]["provider"] == "rundiffusion"
    assert image["metadata"]["seed"] == 77 and image["metadata"]["model"] == "tiny-sdxl"
    assert client.get(image["vault_url"]).status_code == 200
    assert credits(client, headers)["held"] == 0
    assert credits(client, headers)["balance"] == pytest.approx(10 - COST, abs=1e-4)


def remote_newest(a1111: ServerProcess) -> tuple[dict, np.ndarray]:
    """The remote's latest generation (GET /generations/{id}) and its image's pixels."""
    item = httpx.get(f"{a1111.base}/generations/history").json()["items"][0]  # newest first
    found = httpx.get(f"{a1111.base}/generations/{item['request_id']}").json()
    image = httpx.get(found["images"][0]["url"]).content
    return found, np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


def test_rundiffusion_renders_an_img2img_and_an_inpainting_on_the_remote(
    make_client: AppFactory, a1111: ServerProcess, database_url: str | None
) -> None:
    client = make_client(rundiffusion_url=a1111.base, **FAST)
    headers = alice(client)
    state = client.app.state.darkroom  # type: ignore[attr-defined]
    job = image_jobs.new_job(
        state.vault, (png(halves()), (SIZE, SIZE)), None, denoising_strength=0.5,
        resize_mode=0, mask_blur=4, inpainting_fill=1, inpaint_full_res=False,
        inpaint_full_res_padding=0, inpainting_mask_invert=False,
    )  # fmt: skip
    row = submit(client, headers, "rundiffusion", job)
    body = wait_done(client, row["request_id"], headers=headers)
    assert body["status"] == "completed", body
    assert body["images"][0]["metadata"]["provider"] == "rundiffusion"
    # The remote rendered it as an img2img of this very image: its own record and pixels.
    remote, pixels = remote_newest(a1111)
    assert set(remote["inputs"]) == {"init_image"}
    assert remote["inputs"]["init_image"]["width"] == SIZE
    assert np.array_equal(vault_image(client, body), pixels)
    cost = credits_for(SIZE, SIZE, 2, 1)  # ceil(4 steps * strength 0.5)
    assert body["credits_used"] == pytest.approx(cost, abs=1e-6)
    assert credits(client, headers)["balance"] == pytest.approx(10 - cost, abs=1e-6)
    assert credits(client, headers)["held"] == 0
    # An inpainting as AUTOMATIC1111 defaults it ("only masked", fill): what fal cannot take.
    inpaint = inpainting(client, inpaint_full_res=True, inpainting_fill=0)
    body = wait_done(client, submit(client, headers, "rundiffusion", inpaint)["request_id"],
                     headers=headers)  # fmt: skip
    assert body["status"] == "completed", body
    remote, pixels = remote_newest(a1111)
    assert set(remote["inputs"]) == {"init_image", "mask"}
    result = vault_image(client, body)
    assert np.array_equal(result, pixels)
    outside = np.asarray(image_ops.blur_mask(square_mask(), 4)) == 0
    assert np.array_equal(result[outside], np.asarray(halves())[outside])


def test_a_hires_fix_overflows_to_rundiffusion(
    make_client: AppFactory, a1111: ServerProcess, database_url: str | None
) -> None:
    client = make_client(rundiffusion_url=a1111.base, renderer=NeverLoads(), wait=False, **FAST)
    wait_for(lambda: client.get("/health").json()["status"] == "failed")
    headers = alice(client)
    answer = client.post(
        "/sdapi/v1/txt2img", headers=headers,
        json={"prompt": "a barn", "seed": 3, "steps": STEPS, "width": SIZE, "height": SIZE,
              "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2,
              "denoising_strength": 0.5},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    (data,) = answer.json()["images"]
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    assert image.shape == (2 * SIZE, 2 * SIZE, 3)
    remote, pixels = remote_newest(a1111)
    assert remote["images"][0]["metadata"]["seed"] == 3
    assert np.array_equal(image, pixels)  # the remote's own hires render
    body = wait_done(client, json.loads(answer.json()["info"])["request_id"], headers=headers)
    assert body["images"][0]["metadata"]["provider"] == "rundiffusion"
    cost = credits_for(SIZE, SIZE, STEPS + 4 * 2, 1)  # both passes: 4 steps, then 2 at 4x pixels
    assert body["credits_used"] == pytest.approx(cost, abs=1e-6)
    assert credits(client, headers)["held"] == 0
