"""OpenAI's Images API through the real `openai` package (sync and async clients) against
a real Darkroom process, on SQLite and PostgreSQL: every image an ordinary generation."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from pgtest import ENGINES, fresh_database
from processes import ServerProcess, add_user

SMALL = {"size": "256x256", "extra_body": {"steps": 10, "seed": 5}}


@contextmanager
def engine(name: str) -> Iterator[pytest.MonkeyPatch]:
    """An environment whose server processes and commands use a fresh database of `name`."""
    with pytest.MonkeyPatch.context() as patch, ExitStack() as stack:
        patch.delenv("DARKROOM_DATABASE_URL", raising=False)
        if name == "postgresql":
            patch.setenv("DARKROOM_DATABASE_URL", stack.enter_context(fresh_database()))
        yield patch


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[ServerProcess]:
    """Open mode, latent previews every step (for partial images)."""
    data = tmp_path_factory.mktemp(f"openai-{request.param}")
    with engine(request.param) as patch:
        patch.setenv("DARKROOM_PREVIEW_EVERY", "1")
        with ServerProcess(data, models_dir, data / "server.log") as process:
            yield process


def openai_client(server: ServerProcess, key: str = "unused", **options: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0, **options)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai_client(server) as opened:
        yield opened


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def contract_pixels(server: ServerProcess, seed: int) -> bytes:
    body = {"prompt": "a lighthouse", "options": {"format": "png"},
            "settings": {"width": 256, "height": 256, "steps": 10, "seed": seed}}  # fmt: skip
    request_id = httpx.post(f"{server.base}/image/generate", json=body).json()["request_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.base}/generations/{request_id}/status").json()
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.2)
    assert status["status"] == "completed", status
    return Image.open(io.BytesIO(httpx.get(status["images"][0]["url"]).content)).tobytes()


def test_generate_base64_png_is_an_ordinary_generation_with_the_contracts_pixels(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    result = client.images.generate(
        model="dall-e-3", prompt="a lighthouse", n=2, response_format="b64_json", **SMALL
    )
    assert len(result.data) == 2 and result.size == "256x256"
    assert result.output_format == "png" and result.quality == "auto"
    assert result.background == "opaque"
    assert result.usage is not None and result.usage.input_tokens_details.text_tokens == 2
    images = [decoded(item.b64_json) for item in result.data]
    assert all(image.format == "PNG" and image.size == (256, 256) for image in images)
    assert result.data[0].revised_prompt == "a lighthouse"
    assert images[0].tobytes() != images[1].tobytes()  # seeds 5 and 6
    assert "Seed: 5" in images[0].text["parameters"]
    # Same seed, same pixels as POST /image/generate.
    assert images[0].tobytes() == contract_pixels(server, 5)
    history = httpx.get(f"{server.base}/generations/history").json()
    assert any(item["prompt"] == "a lighthouse" for item in history["items"])


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_urls_and_output_formats(client: openai.OpenAI, fmt: str, magic: bytes) -> None:
    result = client.images.generate(
        prompt="a harbour", response_format="url", output_format=fmt, output_compression=80,
        **SMALL,
    )  # fmt: skip
    assert result.output_format == fmt
    url = result.data[0].url
    assert url is not None and "/files/" in url and "sig=" in url
    assert httpx.get(url).content.startswith(magic)


def test_dall_e_answers_urls_and_gpt_image_base64_unless_asked(client: openai.OpenAI) -> None:
    assert client.images.generate(model="dall-e-2", prompt="a boat", **SMALL).data[0].url
    assert client.images.generate(model="gpt-image-1", prompt="a boat", **SMALL).data[0].b64_json


def test_streaming_partial_images_then_completed(client: openai.OpenAI) -> None:
    events = list(
        client.images.generate(
            prompt="a lighthouse", stream=True, partial_images=2, output_format="jpeg", **SMALL
        )
    )
    kinds = [event.type for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    assert decoded(events[0].b64_json).size == (256, 256)
    final = decoded(events[-1].b64_json)
    assert final.format == "JPEG" and events[-1].size == "256x256"


def test_async_client_generates_and_streams(server: ServerProcess) -> None:
    import asyncio

    async def run() -> tuple[openai.types.ImagesResponse, list[str]]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.base}/v1", api_key="unused", max_retries=0
        ) as client:
            result = await client.images.generate(prompt="a lighthouse", **SMALL)
            stream = await client.images.generate(prompt="a lighthouse", stream=True, **SMALL)
            kinds = [event.type async for event in stream]
            return result, kinds

    result, kinds = asyncio.run(run())
    assert result.data[0].url
    assert kinds == ["image_generation.completed"]


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.startswith("tiny-sdxl [")
    assert client.models.retrieve(models[0].id).id == models[0].id
    assert client.models.retrieve("dall-e-3").id == models[0].id
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_lora_tags_and_darkroom_knobs(client: openai.OpenAI) -> None:
    def pixels(prompt: str, **extra: object) -> bytes:
        body = {**SMALL["extra_body"], **extra}
        result = client.images.generate(
            prompt=prompt, size="256x256", response_format="b64_json", extra_body=body
        )
        assert result.data[0].revised_prompt.strip() == "a lighthouse"
        return decoded(result.data[0].b64_json).tobytes()

    plain = pixels("a lighthouse")
    assert pixels("a lighthouse <lora:tiny-lora-0:0.8>") != plain
    assert pixels("a lighthouse", negative_prompt="fog", cfg_scale=4) != plain
    assert pixels("a lighthouse", sampler="DPM++ 2M", scheduler="karras") != plain


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "100x100"}, "size"),
        ({"size": "257x256"}, "size"),
        ({"n": 11}, "n"),
        ({"quality": "ultra"}, "quality"),
        ({"background": "transparent"}, "background"),
        ({"response_format": "gif"}, "response_format"),
        ({"extra_body": {"steps": 500}}, "steps"),
        ({"extra_body": {"loras": [{"id": 999, "weight": 1}]}}, "loras"),
        ({"prompt": "<lora:tiny-lora-0:nope>"}, "prompt"),
    ],
)
def test_bad_requests_name_the_param(
    client: openai.OpenAI, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(**{"prompt": "a boat", **fields})  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    assert caught.value.param == param, caught.value.body
    assert caught.value.type == "invalid_request_error"


def test_unknown_model_is_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="sdxl-turbo-9000", prompt="a boat", **SMALL)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


def test_open_webui_openai_engine_request(server: ServerProcess) -> None:
    """What Open WebUI's `openai` image engine sends (backend/open_webui/routers/images.py,
    image_generations): a JSON body of model, prompt, n, size, and `response_format:
    b64_json` unless the model matches `^gpt-image`; it reads `data[].url` or `b64_json`."""
    title = httpx.get(f"{server.base}/v1/models").json()["data"][0]["id"]
    headers = {"Authorization": "Bearer sk-anything", "Content-Type": "application/json"}
    for model, extra in ((title, {"response_format": "b64_json"}), ("gpt-image-1", {})):
        body = {"model": model, "prompt": "a cat", "n": 1, "size": "256x256", **extra}
        response = httpx.post(
            f"{server.base}/v1/images/generations", json=body, headers=headers, timeout=300
        )
        assert response.status_code == 200, response.text
        assert decoded(response.json()["data"][0]["b64_json"]).size == (256, 256)


# -- token mode: authentication, credits, the active limit, a caller that goes away ------


@pytest.fixture(scope="module", params=ENGINES)
def idle_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """Token mode, no devices (jobs wait in the queue), one active generation per user."""
    data = tmp_path_factory.mktemp(f"openai-idle-{request.param}")
    with engine(request.param):
        tokens = {"alice": add_user(data, "alice"), "bob": add_user(data, "bob", "--credits", "0")}
        flags = ("--devices", "none", "--max-active-per-user", "1")
        with ServerProcess(data, models_dir, data / "server.log", *flags) as process:
            yield process, tokens


def test_authentication_error(idle_server: tuple[ServerProcess, dict[str, str]]) -> None:
    server, _ = idle_server
    with openai_client(server, "drk_1_wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.images.generate(prompt="a boat", **SMALL)
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_insufficient_quota(idle_server: tuple[ServerProcess, dict[str, str]]) -> None:
    server, tokens = idle_server
    with openai_client(server, tokens["bob"]) as client, pytest.raises(
        openai.RateLimitError
    ) as caught:
        client.images.generate(prompt="a boat", **SMALL)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"


def test_active_limit_then_a_caller_that_goes_away_cancels(
    idle_server: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, tokens = idle_server
    auth = {"Authorization": f"Bearer {tokens['alice']}"}
    waiting = openai_client(server, tokens["alice"], timeout=3)
    gone: list[BaseException] = []

    def first() -> None:
        try:
            waiting.images.generate(prompt="a slow boat", **SMALL)
        except BaseException as exc:  # the client gives up: its timeout
            gone.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        items = httpx.get(f"{server.base}/generations/history", headers=auth).json()["items"]
        if items:
            break
        time.sleep(0.1)
    assert items and items[0]["status"] == "pending"
    with openai_client(server, tokens["alice"]) as client, pytest.raises(
        openai.RateLimitError
    ) as caught:
        client.images.generate(prompt="another boat", **SMALL)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"]
    thread.join(30)
    waiting.close()
    assert gone and isinstance(gone[0], openai.APITimeoutError)
    # The server saw its caller go: the generation is cancelled and its hold released.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        item = httpx.get(f"{server.base}/generations/history", headers=auth).json()["items"][0]
        if item["status"] == "failed":
            break
        time.sleep(0.1)
    assert item["status"] == "failed" and item["credits_used"] == 0
    account = httpx.get(f"{server.base}/account", headers=auth).json()
    assert account["credits"]["held"] == 0, account


def test_an_idempotency_key_answers_a_repeat_without_a_second_render(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    keyed = {"extra_headers": {"Idempotency-Key": f"openai-{time.time()}"}}
    first = client.images.generate(
        prompt="a keyed fox", response_format="b64_json", **keyed, **SMALL
    )
    again = client.images.generate(
        prompt="a keyed fox", response_format="b64_json", **keyed, **SMALL
    )
    assert again.data[0].b64_json == first.data[0].b64_json
    history = httpx.get(f"{server.base}/generations/history?per_page=100").json()
    assert [item["prompt"] for item in history["items"]].count("a keyed fox") == 1
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.images.generate(prompt="another fox", **keyed, **SMALL)
    assert caught.value.param == "Idempotency-Key"


# -- edits and variations --------------------------------------------------------------

EDIT = {"size": "256x256", "response_format": "b64_json", "output_format": "png",
        "extra_body": {"steps": 10, "seed": 3}}  # fmt: skip


def picture(mode: str = "RGB", size: tuple[int, int] = (256, 256)) -> bytes:
    """A test image with structure (a gradient), as PNG."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def left_half_transparent(size: tuple[int, int] = (256, 256)) -> bytes:
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def test_edit_repaints_only_where_the_mask_is_transparent(client: openai.OpenAI) -> None:
    source = Image.open(io.BytesIO(picture())).convert("RGB")
    result = client.images.edit(
        image=("in.png", picture(), "image/png"), mask=("mask.png", left_half_transparent(),
        "image/png"), prompt="a red fox", **EDIT,
    )  # fmt: skip
    edited = decoded(result.data[0].b64_json).convert("RGB")
    assert edited.size == (256, 256)
    # Outside the mask and its blur, the input's pixels exactly; inside, repainted.
    right = (160, 0, 256, 256)
    assert edited.crop(right).tobytes() == source.crop(right).tobytes()
    assert edited.crop((0, 0, 96, 256)).tobytes() != source.crop((0, 0, 96, 256)).tobytes()


def test_an_images_own_transparent_pixels_are_its_mask(client: openai.OpenAI) -> None:
    source = Image.open(io.BytesIO(picture())).convert("RGBA")
    source.paste((0, 0, 0, 0), (0, 0, 128, 256))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    result = client.images.edit(
        image=("in.png", buffer.getvalue(), "image/png"), prompt="a red fox", **EDIT
    )
    edited = decoded(result.data[0].b64_json).convert("RGB")
    right = (160, 0, 256, 256)
    assert edited.crop(right).tobytes() == source.convert("RGB").crop(right).tobytes()


def test_edit_without_a_mask_and_with_image_list(client: openai.OpenAI) -> None:
    whole = client.images.edit(image=("in.png", picture(), "image/png"), prompt="a fox", **EDIT)
    listed = client.images.edit(image=[("in.png", picture(), "image/png")], prompt="a fox", **EDIT)
    assert decoded(whole.data[0].b64_json).tobytes() == decoded(listed.data[0].b64_json).tobytes()
    source = Image.open(io.BytesIO(picture())).convert("RGB")
    assert decoded(whole.data[0].b64_json).convert("RGB").tobytes() != source.tobytes()


def test_edit_streams_partial_images(client: openai.OpenAI) -> None:
    events = list(client.images.edit(
        image=("in.png", picture(), "image/png"), prompt="a fox", stream=True,
        partial_images=1, **EDIT,
    ))  # fmt: skip
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_variations(client: openai.OpenAI) -> None:
    with pytest.warns(DeprecationWarning):  # the package marks variations deprecated
        result = client.images.create_variation(
            image=("in.png", picture(), "image/png"), n=2, size="256x256",
            response_format="b64_json", extra_body={"steps": 10, "seed": 4},
        )  # fmt: skip
    first, second = (decoded(item.b64_json) for item in result.data)
    assert first.size == second.size == (256, 256) and first.tobytes() != second.tobytes()


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ({"image": ("in.png", b"not an image", "image/png")}, "image"),
        ({"image": ("in.png", picture()[:300], "image/png")}, "image"),
        ({"image": ("in.png", picture(), "image/png"),
          "mask": ("m.png", left_half_transparent((128, 128)), "image/png")}, "mask"),
        ({"image": ("in.png", picture(), "image/png"),
          "mask": ("m.png", picture(), "image/png")}, "mask"),
    ],
)  # fmt: skip
def test_bad_edit_inputs_name_the_param(
    client: openai.OpenAI, files: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(prompt="a fox", **files, **EDIT)  # type: ignore[arg-type]
    assert caught.value.param == param, caught.value.body


def test_open_webui_openai_engine_edit_request(server: ServerProcess) -> None:
    """What Open WebUI's `openai` edit engine sends (backend/open_webui/routers/images.py,
    image_edits): multipart form fields model, prompt, n, size, and `response_format:
    b64_json` unless the model matches `^gpt-image`, the image as a file named `image`."""
    fields = {"model": "dall-e-2", "prompt": "a cat", "n": "1", "size": "256x256",
              "response_format": "b64_json"}  # fmt: skip
    response = httpx.post(
        f"{server.base}/v1/images/edits",
        data=fields,
        files={"image": ("generated-image.png", picture(), "image/png")},
        headers={"Authorization": "Bearer sk-anything"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    assert decoded(response.json()["data"][0]["b64_json"]).size == (256, 256)
