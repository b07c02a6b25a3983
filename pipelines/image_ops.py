"""AUTOMATIC1111's image handling for img2img and inpainting, in pixels (PIL and numpy, no
torch): resize modes, the mask (binary, inverted, blurred), the fill of masked areas, the
"only masked" crop and the overlay that puts the init image's pixels back outside the mask.
Ported from modules/images.py and modules/masking.py so that results match."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

LANCZOS = Image.Resampling.LANCZOS


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """AUTOMATIC1111's resize modes: 0 (and 3) just resize, 1 crop and resize (cover, centre
    crop), 2 resize and fill (fit, the bands filled by stretching the edge rows/columns)."""
    if mode not in (1, 2):
        return image.resize((width, height), LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if (mode == 1) == (ratio > src_ratio):
        src_w, src_h = width, image.height * width // image.width
    else:
        src_w, src_h = image.width * height // image.height, height
    resized = image.resize((src_w, src_h), LANCZOS)
    out = Image.new(image.mode, (width, height))
    out.paste(resized, (width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2 and ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), (0, 0))
            edge = (0, resized.height, width, resized.height)
            out.paste(resized.resize((width, fill), box=edge), (0, fill + src_h))
    elif mode == 2 and ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), (0, 0))
            edge = (resized.width, 0, resized.width, height)
            out.paste(resized.resize((fill, height), box=edge), (fill + src_w, 0))
    return out


def binary_mask(mask: Image.Image, invert: bool) -> Image.Image:
    """White (255) where to repaint: the alpha channel of a transparent RGBA mask, else its
    luminance, thresholded at 128 (A1111's create_binary_mask), optionally inverted."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.split()[-1]
    mask = mask.convert("L").point(lambda x: 255 if x > 128 else 0)
    return ImageOps.invert(mask) if invert else mask


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of sigma `radius` (kernel 2 * int(2.5 * r + 0.5) + 1)."""
    if radius <= 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur(radius))


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box around the mask's nonzero pixels grown by `padding`, inside the image."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (
        max(x1 - padding, 0),
        max(y1 - padding, 0),
        min(x2 + padding, mask.width),
        min(y2 + padding, mask.height),
    )


def expand_crop_region(
    box: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int
) -> tuple[int, int, int, int]:
    """Grow `box` to the aspect ratio width:height, as far as the image allows (A1111's
    expand_crop_region)."""
    x1, y1, x2, y2 = box
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), image_h)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), image_w)
    return x1, y1, x2, y2


def _grow(low: int, high: int, diff: int, limit: int) -> tuple[int, int]:
    """[low, high) widened by `diff`, centred, shifted back inside [0, limit)."""
    low -= diff // 2
    high += diff - diff // 2
    if high >= limit:
        low -= high - limit
        high = limit
    return max(low, 0), min(high, limit)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with ever less blurred colours of the rest."""
    filled = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


def overlay_of(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The init image's pixels, opaque where the (blurred) mask is black: what A1111 lays
    over every inpainting result."""
    overlay = Image.new("RGBa", image.size)
    alpha = ImageOps.invert(mask_for_overlay.convert("L"))
    overlay.paste(image.convert("RGBA").convert("RGBa"), mask=alpha)
    return overlay.convert("RGBA")


def apply_overlay(
    result: Image.Image, overlay: Image.Image, paste_to: tuple[int, int, int, int] | None
) -> Image.Image:
    """The result with the overlay composited on top; an "only masked" result is first
    resized into its crop box of the full image."""
    if paste_to is not None:
        x, y, w, h = paste_to
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_image(1, result, w, h), (x, y))
        result = base
    result = result.convert("RGBA")
    result.alpha_composite(overlay)
    return result.convert("RGB")


def latent_mask(mask: Image.Image, width: int, height: int) -> np.ndarray:
    """The repaint mask at latent size (1 repaint, 0 keep), rounded as A1111 rounds it."""
    small = mask.convert("L").resize((width, height), Image.Resampling.BICUBIC)
    return np.around(np.asarray(small, dtype=np.float32) / 255)


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """RGB, transparent pixels composited over `background` (A1111's images.flatten)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        flat = Image.new("RGBA", image.size, background)
        flat.alpha_composite(image)
        return flat.convert("RGB")
    return image.convert("RGB")


def open_inputs(
    init_path: str, mask_path: str | None, invert: bool, blur: int
) -> tuple[Image.Image, Image.Image | None]:
    """An img2img's init image (flattened) and mask (binary, inverted when asked, resized
    to the init image's size as A1111 resizes it with the image, blurred) from their files."""
    with Image.open(init_path) as opened:
        image = flatten(opened)
    if mask_path is None:
        return image, None
    with Image.open(mask_path) as opened:
        mask = binary_mask(opened, invert)
    if mask.size != image.size:
        mask = mask.resize(image.size, LANCZOS)
    return image, blur_mask(mask, blur)


def fit_masked(
    mode: int, image: Image.Image, mask: Image.Image, width: int, height: int
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """A whole-picture inpainting's image and mask at the output size (resize `mode`) and
    the overlay laid over its result (A1111 doubles the blurred mask for it)."""
    mask = resize_image(mode, mask, width, height)
    image = resize_image(mode, image, width, height)
    doubled = np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
    return image, mask, overlay_of(image, Image.fromarray(doubled))
