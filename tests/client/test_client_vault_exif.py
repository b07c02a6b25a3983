"""server/vault.py writes AUTOMATIC1111's infotext into every format it encodes."""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image

from client_fixtures import CLIENT_DIR  # noqa: F401  (puts darkroom_client on sys.path)
from darkroom_client.infotext import parse_infotext, read_parameters
from server.store.vault import encode

TEXT = (
    "a lighthouse, naïve ☃\nNegative prompt: fog\nSteps: 10, Sampler: euler, CFG scale: 7, "
    "Seed: 42, Size: 64x64, Model: tiny, Generator: Darkroom"
)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_every_format_carries_the_infotext(fmt: str) -> None:
    data = encode(Image.new("RGB", (64, 64), "teal"), fmt, 95, TEXT)
    assert read_parameters(data) == TEXT
    assert parse_infotext(read_parameters(data) or "")["params"]["Seed"] == "42"


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_exif_user_comment_is_written_as_automatic1111_does(fmt: str) -> None:
    """piexif's UserComment.dump(text, encoding="unicode"): b"UNICODE\\0" + UTF-16 in the
    big-endian order of its TIFF header."""
    image = Image.open(io.BytesIO(encode(Image.new("RGB", (64, 64)), fmt, 90, TEXT)))
    exif = image.getexif()
    assert exif.endian == ">"
    comment = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert comment == b"UNICODE\0" + TEXT.encode("utf-16-be")
