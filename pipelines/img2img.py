"""Image-to-image on the loaded SDXL components (StableDiffusionXLImg2ImgPipeline.from_pipe:
no second copy of the weights): img2img and inpainting with AUTOMATIC1111's semantics, and
the hires fix's second pass. An SDXL inpainting checkpoint inpaints through the same loop,
its UNet given the mask and the masked image's latents too (pipelines.inpaint_unet).
SDXLRenderer.render_batch calls these with its scheduler and LoRAs already set; progress,
previews and interrupts go through the same StepProgress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from pipelines import image_ops, inpaint_unet
from pipelines.placement import scale
from pipelines.progress import StepProgress, offset_steps
from pipelines.spec import LATENT_UPSCALERS, GenerationSpec, HiresFix

# `renderer` below is the SDXLRenderer calling (typed Any: pipelines.sdxl imports this).
SDXLRenderer = Any

StepFn = Callable[[int, int], None] | None


@dataclass
class Start:
    """One spec's starting point: its latents (one row per image) and, when inpainting,
    the latent repaint mask and what A1111 lays over the decoded result, and for an
    inpainting model its UNet's extra channels (inpaint_unet.conditioning)."""

    latents: torch.Tensor
    mask: torch.Tensor | None = None
    overlay: Image.Image | None = None
    paste_to: tuple[int, int, int, int] | None = None
    extra: torch.Tensor | None = None


def img2img_pipe(renderer: SDXLRenderer) -> Any:
    """The active model's img2img pipeline, sharing its modules (made once per model)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    loaded = renderer._active
    assert loaded is not None
    if loaded.img2img is None:
        loaded.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(loaded.pipe)
        loaded.img2img.set_progress_bar_config(disable=True)
    loaded.img2img.scheduler = loaded.pipe.scheduler
    return loaded.img2img


def encode(renderer: SDXLRenderer, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
    """Images (RGB, or pixels in [-1, 1]; one size) to UNet-space latents, image by image,
    tiled above the same threshold as decoding; the distribution's mean, so a seed alone
    decides the noise."""
    pipe = renderer._pipe
    vae = pipe.vae
    tensors = [
        image if isinstance(image, torch.Tensor) else pipe.image_processor.preprocess(image)
        for image in images
    ]
    height, width = tensors[0].shape[-2:]
    vae.use_tiling = width * height > renderer.plan.vae_tiling_above
    device = pipe._execution_device
    parts = []
    for pixels in tensors:
        pixels = pixels.to(device=device, dtype=vae.dtype)
        parts.append(vae.encode(pixels).latent_dist.mode())
    return scale(vae, torch.cat(parts))


def prepare(renderer: SDXLRenderer, spec: GenerationSpec) -> Start:
    """AUTOMATIC1111's StableDiffusionProcessingImg2Img.init for one spec: resize, mask
    (inverted, blurred, "only masked" crop), fill, encode; one latent row per seed."""
    image_in = spec.image
    assert image_in is not None
    width, height = spec.width, spec.height
    image, mask = image_ops.open_inputs(
        image_in.init_image, image_in.mask, image_in.inpainting_mask_invert, image_in.mask_blur
    )
    overlay = paste_to = latent_mask = None
    if mask is not None:
        box = None
        if image_in.inpaint_full_res:
            box = image_ops.crop_region(mask, image_in.inpaint_full_res_padding)
        if box is not None:
            box = image_ops.expand_crop_region(box, width, height, *mask.size)
            overlay = image_ops.overlay_of(image, mask)
            paste_to = (box[0], box[1], box[2] - box[0], box[3] - box[1])
            latent_mask = image_ops.resize_image(2, mask.crop(box), width, height)
            image = image_ops.resize_image(2, image.crop(box), width, height)
        else:
            mode = image_in.resize_mode if image_in.resize_mode != 3 else 0
            image, latent_mask, overlay = image_ops.fit_masked(mode, image, mask, width, height)
        if image_in.inpainting_fill != 1:
            image = image_ops.fill(image, latent_mask)
    elif image_in.resize_mode == 3:
        image = image.resize((max(8, image.width // 8 * 8), max(8, image.height // 8 * 8)))
    else:
        image = image_ops.resize_image(image_in.resize_mode, image, width, height)
    latents = encode(renderer, [image])
    extra = None
    if latent_mask is not None and inpaint_unet.takes_mask(renderer._pipe.unet):
        pixels, binary = inpaint_unet.masked_pixels(renderer._pipe, image, latent_mask)
        extra = inpaint_unet.conditioning(binary, encode(renderer, [pixels]))
        extra = extra.repeat(spec.num_images, 1, 1, 1)
    size = (height // 8, width // 8)
    if latents.shape[-2:] != size:  # resize mode 3: the latents upscaled
        latents = torch.nn.functional.interpolate(latents, size, mode="bilinear")
    latents = latents.repeat(spec.num_images, 1, 1, 1)
    if latent_mask is None:
        return Start(latents)
    small = image_ops.latent_mask(latent_mask, width // 8, height // 8)
    repaint = torch.from_numpy(small)[None, None].to(latents.device, latents.dtype)
    if image_in.inpainting_fill == 2:
        noise = torch.cat([_noise(latents[:1], seed) for seed in spec.seeds])
        latents = latents * (1 - repaint) + noise * repaint
    elif image_in.inpainting_fill == 3:
        latents = latents * (1 - repaint)
    repaint = repaint.expand(spec.num_images, 1, -1, -1)
    return Start(latents, repaint, overlay, paste_to, extra)


def _noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(like.shape, generator=generator).to(like.device, like.dtype)


class Blend:
    """callback_on_step_end that keeps what is outside the repaint mask on the init
    image's path (its latents noised to the next step's level, as diffusers' inpainting
    does), then hands the step to StepProgress."""

    def __init__(self, progress: StepProgress, init: torch.Tensor, mask: torch.Tensor, seeds):
        self.progress = progress
        self.init = init
        self.mask = mask
        self.noise = torch.cat([_noise(init[:1], seed) for seed in seeds])

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict) -> dict:
        latents = tensors["latents"]
        scheduler = pipe.scheduler
        following = len(scheduler.timesteps) - pipe.num_timesteps + index + 1
        kept = self.init.to(latents.dtype)
        if following < len(scheduler.timesteps):
            step = scheduler.timesteps[following : following + 1]
            kept = scheduler.add_noise(kept, self.noise.to(latents.dtype), step)
        mask = self.mask.to(latents.dtype)
        tensors["latents"] = latents * mask + kept * (1 - mask)
        return self.progress(pipe, index, timestep, tensors)


def denoise(
    renderer: SDXLRenderer,
    specs: Sequence[GenerationSpec],
    latents: torch.Tensor,
    steps: int,
    run: int,
    callback: Callable[..., dict],
    cfg_scale: float,
) -> torch.Tensor:
    """The last `run` of `steps` scheduled steps from `latents` (noised to that level)."""
    pipe = img2img_pipe(renderer)
    seeds = [seed for spec in specs for seed in spec.seeds]
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    return pipe(
        **renderer._encode(specs),
        image=latents,
        strength=min(1.0, (run + 1e-6) / steps),  # diffusers floors steps * strength
        num_inference_steps=steps,
        guidance_scale=cfg_scale,
        generator=generators,
        callback_on_step_end=callback,
        output_type="latent",
    ).images


def render_img2img(
    renderer: SDXLRenderer,
    specs: Sequence[GenerationSpec],
    on_step: StepFn,
    should_stop: Callable[[], bool] | None,
    on_latents: Callable[[int, Any], None] | None,
) -> list[list[Image.Image]]:
    first = specs[0]
    assert first.image is not None
    starts = [prepare(renderer, spec) for spec in specs]
    latents = torch.cat([start.latents for start in starts])
    run = first.image.steps_run(first.steps)
    total = first.total_steps
    if run > 0:
        progress = StepProgress(run, offset_steps(on_step, 0, total), should_stop, on_latents)
        callback: Callable[..., dict] = progress
        if first.image.mask is not None:
            masks = torch.cat([start.mask for start in starts if start.mask is not None])
            seeds = [seed for spec in specs for seed in spec.seeds]
            callback = Blend(progress, latents, masks, seeds)
        extras = [start.extra for start in starts if start.extra is not None]
        unet = renderer._pipe.unet
        extra = inpaint_unet.conditioned(unet, torch.cat(extras)) if extras else nullcontext()
        with extra:
            latents = denoise(
                renderer, specs, latents, first.steps, run, callback, first.cfg_scale
            )
    images = iter(renderer._decode(latents, first.width * first.height))
    out = []
    for spec, start in zip(specs, starts, strict=True):
        done = [next(images) for _ in spec.seeds]
        if start.overlay is not None:
            done = [image_ops.apply_overlay(i, start.overlay, start.paste_to) for i in done]
        out.append(done)
    if first.hires is None:
        return out
    # A hires fix of an image to image: its finished picture (the overlay laid) upscaled and
    # denoised again, as for a text to image's first pass.
    latents = encode(renderer, [image for done in out for image in done])
    steps = offset_steps(on_step, run, total)
    latents = hires_pass(renderer, specs, latents, steps, should_stop, on_latents)
    images = iter(renderer._decode(latents, first.hires.width * first.hires.height))
    return [[next(images) for _ in spec.seeds] for spec in specs]


def upscale(renderer: SDXLRenderer, latents: torch.Tensor, base: int, hires: HiresFix) -> Any:
    """The first pass's latents at the hires size: interpolated in latent space, or decoded,
    resized as pictures and encoded again."""
    size = (hires.height // 8, hires.width // 8)
    if hires.upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[hires.upscaler]
        return torch.nn.functional.interpolate(
            latents.float(), size, mode=mode, antialias=antialias
        ).to(latents.dtype)
    method = Image.Resampling.NEAREST if hires.upscaler == "Nearest" else image_ops.LANCZOS
    images = renderer._decode(latents, base)
    bigger = [image.resize((hires.width, hires.height), method) for image in images]
    return encode(renderer, bigger)


def hires_pass(
    renderer: SDXLRenderer,
    specs: Sequence[GenerationSpec],
    latents: torch.Tensor,
    on_step: StepFn,
    should_stop: Callable[[], bool] | None,
    on_latents: Callable[[int, Any], None] | None,
) -> torch.Tensor:
    """AUTOMATIC1111's hires second pass: exactly `hires.steps` steps, the end of a
    schedule of steps / strength, with the hires sampler and prompts."""
    first = specs[0]
    hires = first.hires
    assert hires is not None
    latents = upscale(renderer, latents, first.width * first.height, hires)
    seeds = [seed for spec in specs for seed in spec.seeds]
    renderer._pipe.scheduler = renderer._scheduler(hires.sampler or first.sampler, seeds)
    second = [
        replace(
            spec,
            prompt=spec.hires.prompt or spec.prompt,
            negative_prompt=spec.hires.negative_prompt or spec.negative_prompt,
        )
        for spec in specs
        if spec.hires is not None
    ]
    if hires.denoising_strength <= 0:
        return latents
    schedule = int(hires.steps / min(hires.denoising_strength, 0.999))
    progress = StepProgress(hires.steps, on_step, should_stop, on_latents)
    return denoise(renderer, second, latents, schedule, hires.steps, progress, first.cfg_scale)
