"""server.api.image_input: every bad image an ImageInputError naming the field, never an
exception of PIL's; EXIF orientation applied; alpha kept for masks; limits."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from server.api.image_input import ImageInputError, decode, from_base64

LIMIT = 4096 * 4096


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode("init_images.0", encoded(image, "JPEG", exif=exif), LIMIT)
    assert decoded.size == (20, 40)
    assert Image.open(io.BytesIO(decoded.png)).size == (20, 40)


def test_alpha_is_kept_and_odd_modes_converted() -> None:
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode("mask", encoded(mask), LIMIT).image.mode == "RGBA"
    cmyk = Image.new("CMYK", (8, 8))
    assert decode("init_images.0", encoded(cmyk, "JPEG"), LIMIT).image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"GIF89a not really", 422, "not an image"),
        (b"plain text", 422, "not an image"),
        (encoded(Image.new("RGB", (64, 64)))[:60], 422, "could not decode"),
        (encoded(Image.new("L", (300, 300))), 400, "300x300 (90000 pixels)"),
    ],
)
def test_bad_images_name_the_field(data: bytes, status: int, words: str) -> None:
    with pytest.raises(ImageInputError) as caught:
        decode("mask", data, max_pixels=256 * 256)
    assert caught.value.field == "mask" and caught.value.status == status
    assert words in caught.value.message


def test_base64_forms_and_byte_limit() -> None:
    png = encoded(Image.new("RGB", (4, 4)))
    bare = base64.b64encode(png).decode()
    assert from_base64("f", bare, 1000) == png
    assert from_base64("f", f"data:image/png;base64,{bare}", 1000) == png
    assert from_base64("f", bare.rstrip("="), 1000) == png  # unpadded, as some clients send
    for bad, status in (("%%%", 422), ("data:image/png,abc", 422), (123, 422), (bare, 413)):
        with pytest.raises(ImageInputError) as caught:
            from_base64("f", bad, 10 if bad == bare else 1000)
        assert caught.value.status == status
