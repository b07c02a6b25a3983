"""An image-to-image job's inputs as remote providers send them: the init image and mask read
from the vault, as base64 (AUTOMATIC1111) or data URIs prepared the way Darkroom's own
img2img prepares them (fal), and what fal's endpoints cannot honour."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines import image_ops
from pipelines.spec import INPAINTING_FILLS, HiresFix, ImageInput

# fal-ai/fast-sdxl/image-to-image's (and /inpainting's) `strength` range, by its docs.
FAL_MIN_STRENGTH = 0.05


def fal_refusal(image: ImageInput | None, hires: HiresFix | None) -> str | None:
    """What of an image-to-image job fal's fast-sdxl endpoints cannot do (None: nothing)."""
    if hires is not None:
        return "a hires fix (it has no second pass)"
    if image is None:
        return None
    if image.resize_mode == 3:
        return "resize_mode 3 (latent upscale)"
    if not FAL_MIN_STRENGTH <= image.denoising_strength <= 1:
        return (
            f"denoising_strength {image.denoising_strength:g}"
            f" (its strength goes from {FAL_MIN_STRENGTH} to 1)"
        )
    if image.mask is None:
        return None
    if image.inpaint_full_res:
        return "inpaint_full_res (inpaint area 'only masked')"
    if image.inpainting_fill != 1:
        fill = INPAINTING_FILLS[image.inpainting_fill]
        return (
            f"inpainting_fill {image.inpainting_fill} ({fill!r}; its inpainting starts"
            " from the original, inpainting_fill 1)"
        )
    return None


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def vault_base64(path: str) -> str:
    """A vault input (already a PNG) as AUTOMATIC1111's bare base64."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


@dataclass(frozen=True)
class FalInputs:
    """`image_url` and `mask_url` for fal, and the overlay Darkroom lays over fal's result
    (the init image's pixels outside the blurred mask, as AUTOMATIC1111 does)."""

    image_url: str
    mask_url: str | None
    overlay: Image.Image | None

    def finish(self, result: Image.Image) -> Image.Image:
        if self.overlay is None:
            return result
        if result.size != self.overlay.size:
            result = result.resize(self.overlay.size, image_ops.LANCZOS)
        return image_ops.apply_overlay(result, self.overlay, None)


def fal_inputs(image: ImageInput, width: int, height: int) -> FalInputs:
    """The init image resized to the output size by `resize_mode` (fal takes the size from
    `image_size`); the mask inverted, blurred and resized as pipelines.img2img does."""
    init, mask = image_ops.open_inputs(
        image.init_image, image.mask, image.inpainting_mask_invert, image.mask_blur
    )
    if mask is None:
        resized = image_ops.resize_image(image.resize_mode, init, width, height)
        return FalInputs(data_uri(resized), None, None)
    resized, mask, overlay = image_ops.fit_masked(image.resize_mode, init, mask, width, height)
    return FalInputs(data_uri(resized), data_uri(mask), overlay)
