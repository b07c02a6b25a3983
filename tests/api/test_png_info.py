"""POST /sdapi/v1/png-info with hostile images: a decompression bomb's header, a PNG cut
inside its text chunk, garbage, and a huge text chunk are clear 422s in AUTOMATIC1111's
shape (no memory address), and a real image still reads back its parameters."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image, PngImagePlugin
from starlette.testclient import TestClient

from conftest import AppFactory
from fakes import Fake, Solid
from server.api.a1111.info import PNG_INFO_MAX_PIXELS

ROUTE = "/sdapi/v1/png-info"
INFOTEXT = "a lighthouse\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 7"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, *chunks: bytes) -> bytes:
    """A PNG that claims `width`x`height` (its pixels never follow)."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(chunks) + chunk(b"IEND", b"")


def png_with(text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(out, "PNG", pnginfo=info)
    return out.getvalue()


def ask(client: TestClient, data: bytes) -> dict:
    response = client.post(ROUTE, json={"image": base64.b64encode(data).decode()})
    return {"status": response.status_code, **response.json()}


def refusal(answer: dict) -> str:
    assert answer["status"] == 422, answer
    detail = answer["detail"][0]
    assert detail["loc"] == ["body", "image"]
    assert "0x" not in detail["msg"] and "BytesIO" not in detail["msg"]
    return detail["msg"]


def test_a_real_image_reads_back(make_client: AppFactory) -> None:
    client = make_client(Fake(Solid()))
    answer = ask(client, png_with(INFOTEXT))
    assert answer["status"] == 200 and answer["info"] == INFOTEXT
    assert answer["parameters"]["Steps"] == "20"
    assert answer["parameters"]["Prompt"] == "a lighthouse"
    data_url = "data:image/png;base64," + base64.b64encode(png_with(INFOTEXT)).decode()
    assert client.post(ROUTE, json={"image": data_url}).json()["info"] == INFOTEXT


def test_hostile_images_are_clear_422s(make_client: AppFactory) -> None:
    client = make_client(Fake(Solid()))
    bomb = refusal(ask(client, png_header(30000, 30000)))
    assert f"larger than {PNG_INFO_MAX_PIXELS} pixels" in bomb
    # Past ours, short of PIL's own bound: still refused before any pixel is decoded.
    refusal(ask(client, png_header(8193, 8192)))
    refusal(ask(client, png_header(10000, 10000)))
    whole = png_with(INFOTEXT)
    cut = whole[: whole.index(b"tEXt") + 12]  # inside the text chunk
    assert "damaged or cut short" in refusal(ask(client, cut))
    assert "not an image" in refusal(ask(client, b"garbage, not an image"))
    refusal(ask(client, b"\x89PNG\r\n"))  # a signature and nothing else
    big = refusal(ask(client, png_with("a" * (64 * 1024 + 1))))
    assert "over 65536 characters" in big
    long_line = "a" * 60_000  # no colon: once a quadratic parse, now fast
    assert ask(client, png_with(long_line))["info"] == long_line


def test_the_body_is_read_bounded(make_client: AppFactory) -> None:
    client = make_client(Fake(Solid()))
    response = client.post(
        ROUTE, content=b"x", headers={"Content-Type": "application/json",
                                      "Content-Length": str(65 * 1024 * 1024)},
    )  # fmt: skip
    assert response.status_code == 413
    assert set(response.json()) == {"error", "detail", "body", "errors"}
