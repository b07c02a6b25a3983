"""Image-to-image jobs on fal (the double, fal_double.py), on SQLite and on PostgreSQL: an
img2img that overflows from AUTOMATIC1111's /sdapi/v1/img2img, an inpainting that names
fal, both in the vault and charged once; a job fal cannot render as asked stays local on
`auto` and is a PROVIDER_ERROR when fal is named."""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import numpy as np
import pytest
from fal_double import FalDouble, colour, decode
from PIL import Image
from remote_fixtures import alice, credits, fal, fal_client, wait_for
from starlette.testclient import TestClient

from conftest import AppFactory, wait_done
from fakes import NeverLoads
from pipelines import image_ops
from server.contract import ANY_STEPS, ApiError, ImageGenerationRequest, credits_for, parse
from server.jobs import image_jobs

__all__ = ["fal"]  # the fixture

SIZE, STEPS = 256, 4


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


def no_local_device(make_client: AppFactory, fal: FalDouble) -> TestClient:
    """A server whose own device never comes up: `auto` sends what a remote can take."""
    client = fal_client(make_client, fal, renderer=NeverLoads(), wait=False)
    wait_for(lambda: client.get("/health").json()["status"] == "failed")
    return client


def halves() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    image.paste((20, 40, 220), (SIZE // 2, 0, SIZE, SIZE))
    return image


def square_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (64, 64, 160, 160))
    return mask


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def vault_image(client: TestClient, body: dict[str, Any]) -> np.ndarray:
    (image,) = body["images"]
    fetched = client.get(image["vault_url"])
    assert fetched.status_code == 200
    return np.asarray(Image.open(io.BytesIO(fetched.content)).convert("RGB"))


def submit(
    client: TestClient, headers: dict[str, str], provider: str, image_job: dict[str, Any]
) -> dict[str, Any]:
    """Admit a job as the contract route will (it cannot name an image job's provider yet)."""
    state = client.app.state.darkroom  # type: ignore[attr-defined]
    user = state.accounts.by_token(headers["Authorization"].removeprefix("Bearer "))
    request = parse(
        ImageGenerationRequest,
        {"prompt": "a red door", "options": {"provider": provider, "format": "png"},
         "settings": {"width": SIZE, "height": SIZE, "steps": STEPS, "seed": 9}},
        ANY_STEPS,  # as AUTOMATIC1111's routes take them
    )  # fmt: skip
    return state.admission.submit(request, user, image_job=image_job)


def inpainting(client: TestClient, **image: Any) -> dict[str, Any]:
    state = client.app.state.darkroom  # type: ignore[attr-defined]
    fields = {"denoising_strength": 0.6, "resize_mode": 0, "mask_blur": 4, "inpainting_fill": 1,
              "inpaint_full_res": False, "inpaint_full_res_padding": 0,
              "inpainting_mask_invert": False, **image}  # fmt: skip
    size = (SIZE, SIZE)
    return image_jobs.new_job(state.vault, (png(halves()), size), (png(square_mask()), size),
                              **fields)  # fmt: skip


def test_img2img_overflows_from_sdapi_img2img_to_fal(
    make_client: AppFactory, fal: FalDouble, database_url: str | None
) -> None:
    client = no_local_device(make_client, fal)
    headers = alice(client)
    answer = client.post(
        "/sdapi/v1/img2img", headers=headers,
        json={"init_images": [base64.b64encode(png(halves())).decode()], "prompt": "a barn",
              "seed": 5, "steps": STEPS, "width": SIZE, "height": SIZE,
              "denoising_strength": 0.5},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    (submitted,) = fal.submits
    assert submitted["app"] == "fal-ai/fast-sdxl/image-to-image"
    sent = submitted["body"]
    assert "mask_url" not in sent
    assert {k: sent[k] for k in ("prompt", "strength", "seed", "num_inference_steps")} == {
        "prompt": "a barn", "strength": 0.5, "seed": 5, "num_inference_steps": STEPS
    }  # fmt: skip
    assert sent["image_size"] == {"width": SIZE, "height": SIZE}
    assert np.array_equal(np.asarray(decode(sent["image_url"]).convert("RGB")), halves())
    # fal's image (the init image blended with the seed's colour) is what the call answers
    expected = np.asarray(Image.blend(halves(), Image.new("RGB", (SIZE, SIZE), colour(5)), 0.5))
    (data,) = answer.json()["images"]
    answered = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    assert np.array_equal(answered, expected)
    request_id = json.loads(answer.json()["info"])["request_id"]
    body = wait_done(client, request_id, headers=headers)
    assert body["images"][0]["metadata"]["provider"] == "fal"
    assert np.array_equal(vault_image(client, body), expected)
    cost = credits_for(SIZE, SIZE, math.ceil(STEPS * 0.5), 1)  # the steps the strength runs
    assert body["credits_used"] == pytest.approx(cost, abs=1e-6)
    assert credits(client, headers) == pytest.approx(
        {"unlimited": False, "balance": 10 - cost, "held": 0.0, "available": 10 - cost}, abs=1e-6
    )


def test_inpainting_named_fal_renders_there_with_the_mask_across_a_restart(
    make_client: AppFactory, fal: FalDouble, database_url: str | None
) -> None:
    client = fal_client(make_client, fal)
    headers = alice(client)
    fal.release.clear()  # fal holds it IN_PROGRESS while this server restarts
    row = submit(client, headers, "fal", inpainting(client))
    assert row["provider"] == "fal"
    status = f"/generations/{row['request_id']}/status"
    wait_for(lambda: client.get(status, headers=headers).json()["status"] == "processing")
    client.close()
    client = fal_client(make_client, fal)  # resumes watching it by its stored handle
    fal.release.set()
    body = wait_done(client, row["request_id"], headers=headers)
    assert body["status"] == "completed", body
    (submitted,) = fal.submits  # submitted once
    assert submitted["app"] == "fal-ai/fast-sdxl/inpainting"
    assert submitted["body"]["strength"] == 0.6
    sent_mask = np.asarray(decode(submitted["body"]["mask_url"]).convert("L"))
    assert sent_mask[112, 112] == 255 and sent_mask[8, 8] == 0  # white repaints
    result = vault_image(client, body)
    assert tuple(result[112, 112]) == colour(9)  # repainted by fal inside the mask
    outside = np.asarray(image_ops.blur_mask(square_mask(), 4)) == 0
    assert np.array_equal(result[outside], np.asarray(halves())[outside])
    assert body["images"][0]["metadata"]["provider"] == "fal"
    cost = credits_for(SIZE, SIZE, math.ceil(STEPS * 0.6), 1)
    assert body["credits_used"] == pytest.approx(cost, abs=1e-6)
    assert credits(client, headers)["balance"] == pytest.approx(10 - cost, abs=1e-6)
    assert credits(client, headers)["held"] == 0
    inputs = client.get(f"/generations/{row['request_id']}", headers=headers).json()["inputs"]
    assert set(inputs) == {"init_image", "mask"}


def test_an_openai_edit_names_fal_and_is_inpainted_there(
    make_client: AppFactory, fal: FalDouble, database_url: str | None
) -> None:
    client = fal_client(make_client, fal)
    headers = alice(client)
    mask = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (64, 64, 160, 160))  # OpenAI's mask: transparent is repainted
    files = {"image": ("door.png", png(halves()), "image/png"),
             "mask": ("mask.png", png(mask), "image/png")}  # fmt: skip
    form = {"prompt": "a red door", "size": f"{SIZE}x{SIZE}", "provider": "fal", "seed": "9",
            "steps": "10", "response_format": "b64_json"}  # fmt: skip
    answer = client.post("/v1/images/edits", headers=headers, data=form, files=files)
    assert answer.status_code == 200, answer.text
    (submitted,) = fal.submits
    assert submitted["app"] == "fal-ai/fast-sdxl/inpainting"
    (item,) = answer.json()["data"]
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"))
    assert tuple(result[112, 112]) == colour(9) and tuple(result[8, 8]) == (200, 30, 30)
    assert tuple(result[8, SIZE - 8]) == (20, 40, 220)
    # What fal cannot render, named: OpenAI's error shape, nothing sent.
    refused = client.post("/v1/images/edits", headers=headers, files=files,
                          data={**form, "strength": "0.01"})  # fmt: skip
    assert refused.status_code == 400, refused.text
    assert "'fal'" in refused.json()["error"]["message"]
    assert "denoising_strength 0.01" in refused.json()["error"]["message"]
    assert len(fal.submits) == 1 and credits(client, headers)["held"] == 0


HIRES = {"hires": {"width": 2 * SIZE, "height": 2 * SIZE, "upscaler": "Latent", "steps": 2,
                   "denoising_strength": 0.5, "sampler": None, "prompt": None,
                   "negative_prompt": None}}  # fmt: skip


def test_what_fal_cannot_render_is_refused_when_named_and_kept_local_on_auto(
    make_client: AppFactory, fal: FalDouble, database_url: str | None
) -> None:
    client = no_local_device(make_client, fal)
    headers = alice(client)
    only_masked = inpainting(client, inpaint_full_res=True)
    no_step = inpainting(client, denoising_strength=0.2)  # 4 steps x 0.2: none runs
    for job, words in ((HIRES, "hires fix"), (only_masked, "inpaint_full_res"),
                       (no_step, "no denoising step")):  # fmt: skip
        with pytest.raises(ApiError) as caught:
            submit(client, headers, "fal", job)
        error = caught.value
        assert (error.code, error.http_status) == ("PROVIDER_ERROR", 400)
        assert "'fal'" in error.message and words in error.message
        assert error.details["provider"] == "fal"
        # auto: fal would take a text job now (no local device), but not this one
        assert submit(client, headers, "auto", job)["provider"] == "darkroom"
    assert fal.submits == []
    assert credits(client, headers)["held"] > 0  # the local jobs wait, held, not charged


def test_the_contract_names_fal_for_an_inpainting_and_not_for_a_hires_edit(
    make_client: AppFactory, fal: FalDouble, database_url: str | None
) -> None:
    client = fal_client(make_client, fal)
    headers = alice(client)
    body = {"prompt": "a red door", "init_image": base64.b64encode(png(halves())).decode(),
            "mask": base64.b64encode(png(square_mask())).decode(),
            "settings": {"steps": 10, "seed": 9, "denoising_strength": 0.6},
            "options": {"provider": "fal", "format": "png"}}  # fmt: skip
    answer = client.post("/image/generate", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    done = wait_done(client, answer.json()["request_id"], headers=headers)
    assert done["status"] == "completed", done
    (submitted,) = fal.submits
    assert submitted["app"] == "fal-ai/fast-sdxl/inpainting"
    assert submitted["body"]["image_size"] == {"width": SIZE, "height": SIZE}  # the init's
    result = vault_image(client, done)
    assert tuple(result[112, 112]) == colour(9)
    assert done["images"][0]["metadata"]["provider"] == "fal"
    hires = {**body, "settings": {**body["settings"], "hires": {"scale": 2}}}
    refused = client.post("/image/generate", json=hires, headers=headers)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "PROVIDER_ERROR" and "hires fix" in error["message"]
    assert len(fal.submits) == 1
