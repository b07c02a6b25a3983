"""Records, images and queued jobs survive restarts; temporary images and links expire."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

from PIL import Image
from starlette.testclient import TestClient

from conftest import AppFactory, fetch_image, generate, pixels, render, wait_done, wait_healthy
from fakes import NeverLoads, Stalls


def _png(size: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG_8x8 = _png(8)


def test_completed_generations_survive_restart(make_client: AppFactory) -> None:
    client = make_client()
    body = render(client, options={"num_images": 2})
    before = [pixels(client, body, i) for i in range(2)]
    client.close()
    client = make_client()
    after = client.get(f"/generations/{body['request_id']}/status").json()
    assert after["status"] == "completed"
    assert [pixels(client, after, i) for i in range(2)] == before
    assert fetch_image(client, after["images"][0]["vault_url"]).size == (256, 256)
    assert client.get("/generations/history").json()["itemsTotal"] == 1


def test_queued_and_interrupted_jobs_run_after_restart(make_client: AppFactory) -> None:
    stalls = Stalls()
    client = make_client(renderer=stalls)
    running = generate(client)
    queued = generate(client, "a second fox")
    assert stalls.started.wait(10)
    assert client.get(running["poll_url"]).json()["status"] == "processing"
    client.close()

    client = make_client()
    for body in (running, queued):
        done = wait_done(client, body["request_id"])
        assert done["status"] == "completed"
        assert done["generation_id"] == body["generation_id"]
    reference = render(client, "a second fox")
    assert pixels(client, wait_done(client, queued["request_id"])) == pixels(client, reference)


def test_health_is_503_while_loading_and_when_the_model_fails(make_client: AppFactory) -> None:
    client = make_client(renderer=NeverLoads(), wait=False)
    deadline = time.monotonic() + 10
    while (health := client.get("/health")).json()["status"] == "loading":
        assert health.status_code == 503
        assert time.monotonic() < deadline
    assert health.status_code == 503
    assert health.json()["status"] == "failed" and "no weights here" in health.json()["error"]
    accepted = generate(client)
    assert client.get(accepted["poll_url"]).json()["status"] == "pending"


def test_health_names_model_device_and_queue_depth(client: TestClient) -> None:
    health = wait_healthy(client)
    assert health["status"] == "ok"
    assert (health["model"], health["device"], health["queue_depth"]) == ("tiny", "cpu", 0)


def test_temporary_images_have_no_vault_url_and_expire(make_client: AppFactory) -> None:
    client = make_client(url_ttl_hours=1.0)
    body = render(client, options={"save_to_vault": False})
    image = body["images"][0]
    assert image["vault_url"] is None
    assert fetch_image(client, image["url"]).size == (256, 256)
    assert fetch_image(client, image["thumbnail_url"]).format == "WEBP"
    token = image["url"].split("/files/")[1].split(".")[0]
    assert client.get(f"/vault/{token}.png").status_code == 404

    worker = client.app.state.darkroom.worker  # type: ignore[attr-defined]
    worker.results.url_ttl_seconds = 0.0
    worker.purge_expired()
    assert client.get(image["url"]).status_code == 404
    vault = Path(client.app.state.darkroom.vault.root)  # type: ignore[attr-defined]
    assert not list((vault / "temporary").rglob("*.png"))


def test_signed_links_reject_tampering_and_expiry(client: TestClient) -> None:
    url = render(client)["images"][0]["url"]
    assert client.get(url).status_code == 200
    path, query = url.split("?")
    expires = int(query.split("&")[0].split("=")[1])
    sig = query.split("sig=")[1]
    assert client.get(f"{path}?expires={expires + 1}&sig={sig}").status_code == 404
    assert client.get(f"{path}?expires={expires}&sig={'0' * 32}").status_code == 404
    assert client.get(path).status_code == 404
    vault = client.app.state.darkroom.vault  # type: ignore[attr-defined]
    name = path.split("/files/")[1]
    past = int(time.time()) - 1
    assert client.get(f"{path}?expires={past}&sig={vault.sign(name, past)}").status_code == 404
    assert expires - time.time() >= 24 * 3600


def test_orphans_and_half_written_files_are_removed_at_start(
    make_client: AppFactory, tmp_path: Path
) -> None:
    client = make_client()
    body = render(client)
    edited = client.post(
        "/sdapi/v1/img2img",
        json={"prompt": "x", "init_images": [PNG_8x8], "steps": 2, "width": 256, "height": 256},
    )
    assert edited.status_code == 200, edited.text
    client.close()
    vault = tmp_path / "data" / "vault"
    half = vault / "keep" / "ab" / ".tmp-0123-abc.png"
    orphan = vault / "keep" / "cd" / "orphan.png"
    orphan_input = vault / "inputs" / "ef" / "orphan-input.png"  # written, never recorded
    for path in (half, orphan, orphan_input):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    client = make_client()
    assert not half.exists() and not orphan.exists() and not orphan_input.exists()
    assert client.get(body["images"][0]["vault_url"]).status_code == 200
    request_id = json.loads(edited.json()["info"])["request_id"]
    kept = client.get(f"/generations/{request_id}/inputs/init_image")
    assert kept.status_code == 200
    sent = Image.open(io.BytesIO(base64.b64decode(PNG_8x8)))
    assert Image.open(io.BytesIO(kept.content)).tobytes() == sent.tobytes()
