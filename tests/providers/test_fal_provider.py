"""provider "fal" against the fal queue double (fal_double.py): the request Darkroom sends,
the images it keeps, and every failure mode once."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from fal_double import KEY, FalDouble, colour
from PIL import Image
from remote_fixtures import FAST, alice, credits, fal, fal_client, wait_for

from conftest import AppFactory, generate, wait_done
from fakes import NeverLoads, Stalls
from processes import free_port

__all__ = ["fal"]  # the fixture

def test_fal_renders_copies_into_the_vault_and_charges_once(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    headers = alice(client)
    submitted = generate(
        client, "a lighthouse", headers, settings={"cfg_scale": 6.5, "negative_prompt": "fog"},
        options={"provider": "fal", "num_images": 2},
    )  # fmt: skip
    body = wait_done(client, submitted["request_id"], headers=headers)
    assert body["status"] == "completed", body
    assert [s["app"] for s in fal.submits] == ["fal-ai/fast-sdxl"]
    sent = fal.submits[0]["body"]
    assert sent == {
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "image_size": {"width": 256, "height": 256},
        "num_inference_steps": 10,
        "guidance_scale": 6.5,
        "seed": 42,
        "num_images": 2,
        "format": "png",
    }
    for index, image in enumerate(body["images"]):
        assert image["metadata"]["provider"] == "fal"
        assert image["metadata"]["seed"] == 42 + index
        # Served from the vault (the double's URL is not handed out): permanent.
        assert image["vault_url"].startswith("http://testserver/vault/")
        fetched = client.get(image["vault_url"])
        assert fetched.status_code == 200
        picture = Image.open(io.BytesIO(fetched.content)).convert("RGB")
        assert picture.getpixel((0, 0)) == colour(42 + index)
    cost = 2 * (256 * 256) / 1024**2 * 10 / 30
    assert body["credits_used"] == pytest.approx(cost, abs=1e-4)
    assert credits(client, headers) == pytest.approx(
        {"unlimited": False, "balance": 10 - cost, "held": 0.0, "available": 10 - cost}, abs=1e-4
    )
    health = client.get("/health").json()["providers"]
    assert health["fal"]["configured"] and health["fal"]["reachable"] is True
    assert health["rundiffusion"] == {"configured": False}
    metrics = client.get("/metrics").text
    assert 'darkroom_provider_jobs_total{code="",provider="fal",status="completed"} 1.0' in metrics
    assert 'darkroom_provider_latency_seconds_count{provider="fal"} 1.0' in metrics


def lora_models(models_dir: Path, tmp_path: Path, url: str) -> Path:
    """A models folder sharing the session's tiny model whose first LoRA has a sidecar
    `url` (what fal downloads a LoRA from)."""
    target = tmp_path / "models"
    (target / "loras").mkdir(parents=True)
    (target / "checkpoints").symlink_to(models_dir / "checkpoints")
    lora = sorted((models_dir / "loras").glob("*.safetensors"))[0]
    (target / "loras" / lora.name).symlink_to(lora)
    sidecar = target / "loras" / (lora.name.removesuffix(".safetensors") + ".json")
    sidecar.write_text(json.dumps({"url": url}))
    return target


def test_loras_and_other_samplers_go_to_fal_lora_with_its_scheduler_names(
    make_client: AppFactory, fal: FalDouble, models_dir: Path, tmp_path: Path
) -> None:
    url = "https://example.com/tiny-lora.safetensors"
    client = fal_client(make_client, fal, models_dir=lora_models(models_dir, tmp_path, url))
    lora_id = client.get("/loras/available").json()[0]["id"]
    submitted = generate(
        client, settings={"sampler": "DPM++ 2M Karras"}, loras=[{"id": lora_id, "weight": 0.8}],
        options={"provider": "fal"},
    )  # fmt: skip
    assert wait_done(client, submitted["request_id"])["status"] == "completed"
    (submit,) = fal.submits
    assert submit["app"] == "fal-ai/lora"
    assert submit["body"]["scheduler"] == "DPM++ 2M Karras"
    assert submit["body"]["loras"] == [{"path": url, "scale": 0.8}]
    assert submit["body"]["model_name"] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_a_lora_without_a_url_is_invalid_for_fal_at_submit(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    lora_id = client.get("/loras/available").json()[0]["id"]
    body = {"prompt": "x", "loras": [{"id": lora_id}], "options": {"provider": "fal"}}
    response = client.post("/image/generate", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_LORA"
    assert error["details"]["invalid_ids"] == [lora_id]
    assert "url" in error["details"]["incompatible"][0]["reason"]
    assert fal.submits == []


def test_unconfigured_provider_names_the_configured_ones(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    body = {"prompt": "x", "options": {"provider": "rundiffusion"}}
    response = client.post("/image/generate", json=body)
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (400, "PROVIDER_ERROR")
    assert error["details"]["available"] == ["auto", "fal"]


def test_5xx_answers_to_status_polls_are_retried_then_the_job_completes(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    fal.fail_route, fal.fail_next = "status", [503, 502]
    submitted = generate(client, options={"provider": "fal"})
    assert wait_done(client, submitted["request_id"])["status"] == "completed"
    assert len(fal.submits) == 1 and fal.fail_next == []


def test_a_4xx_fails_the_job_with_the_upstream_detail_and_charges_nothing(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    headers = alice(client)
    fal.reject_422 = True
    submitted = generate(client, headers=headers, options={"provider": "fal"})
    body = wait_done(client, submitted["request_id"], headers=headers)
    assert body["status"] == "failed" and body["credits_used"] == 0
    error = body["error"]
    assert error["code"] == "PROVIDER_ERROR"
    assert error["details"]["provider"] == "fal"
    assert error["details"]["upstream_status"] == 422
    assert error["details"]["upstream_detail"][0]["loc"] == ["body", "prompt"]
    assert credits(client, headers)["balance"] == 10 and credits(client, headers)["held"] == 0


def test_completed_with_an_error_is_a_failure(make_client: AppFactory, fal: FalDouble) -> None:
    client = fal_client(make_client, fal)
    fal.complete_error = "Runner disconnected"
    body = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert body["status"] == "failed"
    assert body["error"]["code"] == "PROVIDER_ERROR"
    assert body["error"]["details"]["reason"] == "runner_disconnected"


def test_an_image_download_that_fails_fails_the_job(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    fal.image_status = 404
    body = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert body["status"] == "failed"
    assert body["error"]["details"]["reason"] == "download_failed"
    assert body["error"]["details"]["upstream_status"] == 404


def test_a_remote_that_is_down_fails_the_job_and_shows_in_health(
    make_client: AppFactory, tmp_path: Path
) -> None:
    client = make_client(fal_key=KEY, fal_url=f"http://127.0.0.1:{free_port()}", **FAST)
    body = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert body["status"] == "failed"
    assert body["error"]["details"]["reason"] == "unreachable"
    fal_health = client.get("/health").json()["providers"]["fal"]
    assert fal_health["reachable"] is False and "could not be reached" in fal_health["last_error"]
    assert 'darkroom_provider_up{provider="fal"} 0.0' in client.get("/metrics").text


def test_a_slow_remote_times_out_and_is_cancelled_there(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal, job_timeout=1.0)
    fal.release.clear()
    body = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert body["status"] == "failed" and body["error"]["code"] == "TIMEOUT"
    wait_for(lambda: fal.cancels == [fal.submits[0]["request_id"]])


def test_cancel_while_remote_is_passed_on(make_client: AppFactory, fal: FalDouble) -> None:
    client = fal_client(make_client, fal)
    fal.release.clear()
    request_id = generate(client, options={"provider": "fal"})["request_id"]
    status = f"/generations/{request_id}/status"
    wait_for(lambda: client.get(status).json()["status"] == "processing")
    answer = client.post(f"/generations/{request_id}/cancel").json()
    assert answer["status"] == "failed" and answer["error"]["code"] == "CANCELLED"
    wait_for(lambda: fal.cancels == [fal.submits[0]["request_id"]])
    assert wait_done(client, request_id)["error"]["code"] == "CANCELLED"


def test_auto_overflows_when_the_local_wait_is_too_long(
    make_client: AppFactory, fal: FalDouble, tiny_renderer: Any
) -> None:
    stalls = Stalls(tiny_renderer)
    client = fal_client(make_client, fal, renderer=stalls, overflow_after=0.001)
    first = generate(client, "local")["request_id"]
    assert stalls.started.wait(30)
    second = generate(client, "overflow", settings={"seed": 7})["request_id"]
    body = wait_done(client, second)
    assert body["status"] == "completed"
    assert body["images"][0]["metadata"]["provider"] == "fal"
    assert body["images"][0]["metadata"]["seed"] == 7  # the seed and settings as asked
    assert fal.submits[0]["body"]["prompt"] == "overflow"
    client.post(f"/generations/{first}/cancel")
    assert wait_done(client, first)["error"]["code"] == "CANCELLED"


def test_auto_goes_remote_when_no_local_device_is_in_service(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal, renderer=NeverLoads(), wait=False)
    wait_for(lambda: client.get("/health").json()["status"] == "failed")
    body = wait_done(client, generate(client)["request_id"])
    assert body["status"] == "completed"
    assert body["images"][0]["metadata"]["provider"] == "fal"
    local = client.get("/health").json()["providers"]["darkroom"]
    assert local == {"configured": True, "state": "failed", "in_service": False}


def test_a_job_fal_cannot_render_stays_local_and_a_named_fal_refuses_it(
    make_client: AppFactory, fal: FalDouble
) -> None:
    from pipelines.spec import HiresFix
    from server.contract import ApiError, ImageGenerationRequest

    client = fal_client(make_client, fal, renderer=NeverLoads(), wait=False)
    wait_for(lambda: client.get("/health").json()["status"] == "failed")
    router = client.app.state.darkroom.admission.router  # type: ignore[attr-defined]
    auto = ImageGenerationRequest.model_validate({"prompt": "a fox"})
    hires = {"hires": HiresFix(512, 512, "Latent", 4, 0.5)}
    # No local device in service: a text-to-image goes to fal; a hires fix not.
    assert router.choose(auto, [], lambda: 1e9) == "fal"
    assert router.choose(auto, [], lambda: 1e9, hires) == "darkroom"
    options = {"provider": "fal"}
    named = ImageGenerationRequest.model_validate({"prompt": "a fox", "options": options})
    with pytest.raises(ApiError) as caught:
        router.choose(named, [], lambda: 0.0, hires)
    assert caught.value.code == "PROVIDER_ERROR" and caught.value.http_status == 400
    assert "'fal'" in caught.value.message and "hires fix" in caught.value.message
