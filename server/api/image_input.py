"""Images that arrive in requests (img2img's init images and masks; OpenAI's image edits
can use the same): base64 (bare or a `data:` URL) or raw bytes, checked and decoded once,
off the event loop. Every way an image can be bad is an ImageInputError naming the field,
which each API renders in its own error format; nothing here answers a 500."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from server.api.offload import off_loop
from server.config import Settings

# What base64 of max_image_bytes takes, plus a data: URL's header: an image-taking route's
# body limit is max_body_bytes plus this for each image it takes.
DATA_URL_SLACK = 256


class ImageInputError(Exception):
    """A bad input image: `status` 413 (too many bytes), 400 (too many pixels) or 422 (not
    base64, not an image, truncated)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True)
class InputImage:
    """A decoded, checked image (EXIF orientation applied) and its PNG encoding."""

    image: Image.Image
    png: bytes

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def body_limit(settings: Settings, images: int) -> int:
    """The body limit of a route taking up to `images` base64 images."""
    encoded = -(-settings.max_image_bytes // 3) * 4 + DATA_URL_SLACK
    return settings.max_body_bytes + images * encoded


def from_base64(field: str, value: object, max_bytes: int) -> bytes:
    """The bytes of a bare or `data:` base64 image string."""
    if not isinstance(value, str) or not value.strip():
        raise ImageInputError(field, "expected a base64-encoded image")
    text = value.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or ";base64" not in header:
            raise ImageInputError(field, "a data: URL must be base64 (data:image/png;base64,...)")
    if len(text) > -(-max_bytes // 3) * 4 + 4:
        raise ImageInputError(field, f"image is larger than {max_bytes} bytes", 413)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "invalid base64 data") from None
    if len(data) > max_bytes:
        raise ImageInputError(field, f"image is larger than {max_bytes} bytes", 413)
    return data


def decode(field: str, data: bytes, max_pixels: int) -> InputImage:
    """The image in `data`, fully read and checked: not an image, truncated, or more than
    `max_pixels` pixels (checked from the header, before anything is decompressed) is an
    ImageInputError. EXIF orientation is applied; mode kept where it carries alpha."""
    try:
        opened = Image.open(io.BytesIO(data))  # reads the header only
        width, height = opened.size
        if width * height > max_pixels:
            raise ImageInputError(
                field,
                f"image is {width}x{height} ({width * height} pixels); the limit is"
                f" {max_pixels} pixels",
                400,
            )
        opened.load()
        image = ImageOps.exif_transpose(opened)
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(field, "not an image (PNG, JPEG, WebP, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        message = f"image is too large ({exc}); the limit is {max_pixels} pixels"
        raise ImageInputError(field, message, 400) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageInputError(field, f"could not decode the image ({exc})") from None
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return InputImage(image, buffer.getvalue())


async def read_base64(field: str, value: object, settings: Settings) -> InputImage:
    """from_base64 then decode, in a worker thread."""

    def work() -> InputImage:
        data = from_base64(field, value, settings.max_image_bytes)
        return decode(field, data, settings.max_image_pixels)

    return await off_loop(work)


MIN_SIDE, MAX_SIDE = 256, 2048  # the contract's smallest and largest width and height


def render_size(size: tuple[int, int]) -> tuple[int, int]:
    """An input image's own size as a render size (an img2img or edit without one): scaled
    into 256-2048 per side, keeping its shape where it can, rounded down to multiples of 8."""
    width, height = size
    scale = min(MAX_SIDE / max(width, height), 1.0)
    scale = max(scale, MIN_SIDE / min(width, height))
    return (
        min(MAX_SIDE, max(MIN_SIDE, int(width * scale) // 8 * 8)),
        min(MAX_SIDE, max(MIN_SIDE, int(height * scale) // 8 * 8)),
    )

