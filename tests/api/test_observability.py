"""Progress events, the OpenAPI document, metrics and logs."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image
from starlette.testclient import TestClient

from conftest import AppFactory, Preloaded, generate, render, wait_done
from fakes import Fake, RaisesOnce, Solid
from processes import ServerProcess
from server.api.logs import JsonFormatter


def read_events(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append({"id": fields["id"], **json.loads(fields["data"])})
    return events


def test_events_stream_every_change_until_the_final_state(client: TestClient) -> None:
    first, second = generate(client), generate(client, "b")
    response = client.get(f"/generations/{second['request_id']}/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response.text)
    statuses = [event["status"] for event in events]
    assert statuses[0] in ("pending", "processing") and statuses[-1] == "completed"
    assert statuses.index("completed") == len(statuses) - 1
    steps = [event["step"] for event in events if event["status"] == "processing"]
    assert steps == sorted(steps) and len(steps) >= 3  # several steps seen, in order
    assert len({event["id"] for event in events}) == len(events)
    assert events[-1]["images"][0]["metadata"]["seed"] == 42
    wait_done(client, first["request_id"])


def test_events_resume_after_the_last_seen_event(client: TestClient) -> None:
    done = render(client)
    url = f"/generations/{done['request_id']}/events"
    [final] = read_events(client.get(url).text)
    assert final["status"] == "completed"
    assert client.get(url, headers={"Last-Event-ID": final["id"]}).text == ""
    resumed = read_events(client.get(url, headers={"Last-Event-ID": "processing.0.3"}).text)
    assert [event["status"] for event in resumed] == ["completed"]
    assert client.get("/generations/nope/events").status_code == 404


def test_disconnected_event_clients_leave_nothing_behind(tmp_path: Path, models_dir: Path) -> None:
    with ServerProcess(tmp_path / "data", models_dir, tmp_path / "server.log") as server:
        body = {"prompt": "slow", "settings": {"width": 1024, "height": 1024, "steps": 150}}
        request_id = httpx.post(f"{server.base}/image/generate", json=body).json()["request_id"]
        for _ in range(5):
            url = f"{server.base}/generations/{request_id}/events"
            with httpx.stream("GET", url, timeout=30) as stream:
                assert next(stream.iter_lines()).startswith("id: ")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            scrape = httpx.get(f"{server.base}/metrics").text
            if "darkroom_event_streams 0.0" in scrape:
                break
            time.sleep(0.1)
        assert "darkroom_event_streams 0.0" in scrape
        httpx.post(f"{server.base}/generations/{request_id}/cancel")
        assert server.stop() == 0


def test_openapi_document_is_valid_and_covers_every_route(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    validate(document)
    paths = document["paths"]
    for path in (
        "/image/generate",
        "/generations/{request_id}/status",
        "/generations/{request_id}/events",
        "/generations/history",
        "/loras/available",
        "/presets/save",
        "/api:_WUcacrv/image/generate",
    ):
        assert path in paths, path
    generate_op = paths["/image/generate"]["post"]
    request = generate_op["requestBody"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][request["$ref"].rsplit("/", 1)[1]]
    assert schema["required"] == ["prompt"]
    assert {"202", "400", "401", "402", "429", "503"} <= set(generate_op["responses"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


@pytest.mark.parametrize("prefix", ["", "/api:_WUcacrv"])
def test_docs_page_needs_no_internet(client: TestClient, prefix: str) -> None:
    """Swagger UI's own files come from this server, so /docs renders on an offline box."""
    page = client.get(f"{prefix}/docs").text
    assert "http://" not in page and "https://" not in page
    bundle = client.get(f"{prefix}/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
    assert bundle.headers["content-type"].startswith("text/javascript")
    css = client.get(f"{prefix}/docs/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get(f"{prefix}/docs/secret.py").json()["error"]["code"] == "NOT_FOUND"


def test_metrics_count_jobs_images_and_durations(
    make_client: AppFactory, tiny_renderer: Preloaded
) -> None:
    client = make_client(renderer=RaisesOnce(tiny_renderer))
    failed = wait_done(client, generate(client)["request_id"])
    assert failed["status"] == "failed"
    render(client, options={"num_images": 2})
    text = client.get("/metrics").text

    def value(pattern: str) -> float:
        match = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.MULTILINE)
        assert match, f"{pattern} not in metrics"
        return float(match.group(1))

    assert value(r'darkroom_jobs_total\{code="",status="completed"\}') == 1
    assert value(r'darkroom_jobs_total\{code="PROVIDER_ERROR",status="failed"\}') == 1
    assert value("darkroom_images_generated_total") == 2
    assert value("darkroom_queue_depth") == 0
    assert value("darkroom_render_seconds_count") == 1
    assert value("darkroom_step_seconds_count") == 1
    assert value("darkroom_queue_wait_seconds_count") == 1
    assert value('darkroom_http_request_duration_seconds_count{method="POST",'
                 'route="generate",status="202"}') == 2
    assert value("darkroom_model_loaded") == 1


def test_one_log_line_per_request_with_its_generation_id(
    make_client: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(renderer=Fake(Solid()))
    with caplog.at_level(logging.INFO, logger="darkroom.http"):
        body = generate(client)
        client.get(f"/generations/{body['request_id']}/status")
    lines = [r for r in caplog.records if r.name == "darkroom.http"]
    submit, status = lines[-2], lines[-1]
    assert submit.request_id == status.request_id == body["request_id"]  # type: ignore[attr-defined]
    assert submit.status == 202 and submit.route == "generate"  # type: ignore[attr-defined]
    entry = json.loads(JsonFormatter().format(submit))
    assert entry["request_id"] == body["request_id"] and entry["level"] == "info"
    assert entry["message"].startswith("POST /image/generate 202")


def test_events_carry_latent_previews_when_asked(make_client: AppFactory) -> None:
    client = make_client(preview_every=2)
    body = generate(client, settings={"steps": 10})
    events = read_events(client.get(f"/generations/{body['request_id']}/events?previews=1").text)
    previews = [event for event in events if event.get("preview")]
    assert previews, [event["status"] for event in events]
    assert all(event["preview_step"] % 2 == 0 for event in previews)
    header, _, data = previews[-1]["preview"].partition(",")
    assert header == "data:image/jpeg;base64"
    picture = Image.open(io.BytesIO(base64.b64decode(data)))
    assert picture.size == (32, 32)  # 1/8 of 256 px: the latents' own size
    plain = read_events(client.get(f"/generations/{generate(client)['request_id']}/events").text)
    assert not any(event.get("preview") for event in plain)
