"""SDXL rendering with diffusers: loaded pipelines, samplers, LoRA stacks; text to image
here, image to image and the hires fix's second pass in pipelines.img2img."""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipelines import img2img, inpaint_unet
from pipelines.lora_fit import LoraFit
from pipelines.lora_hotswap import HotswapAdapters
from pipelines.loras import AdapterCache
from pipelines.model_files import (
    TINY,
)
from pipelines.model_pool import LoadedModel, ModelPool
from pipelines.placement import pad_per_image_linears, unet_per_image, unscale, use_sdpa
from pipelines.progress import StepProgress, offset_steps
from pipelines.samplers import canonical_sampler, make_scheduler
from pipelines.spec import GenerationSpec, ModelSpec, RenderInterrupted, batch_key
from pipelines.tuning import plan_for

if TYPE_CHECKING:
    from PIL import Image

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"

_DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def detect_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_model() -> tuple[str, str]:
    """The model to serve when none was configured, and why, for one log line."""
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        return SDXL_BASE, f"CUDA GPU found ({gpu}), serving SDXL base 1.0"
    return TINY, "no CUDA GPU, serving the tiny random test model (its images are noise)"


def resolve_dtype(dtype: str | None, device: str) -> str:
    if dtype is None:
        kind = device.split(":")[0]
        return {"cuda": "bfloat16", "mps": "float16"}.get(kind, "float32")
    name = _DTYPE_ALIASES.get(dtype.strip().lower())
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return name


class SDXLRenderer(ModelPool):
    """Loads SDXL pipelines and renders GenerationSpecs with them: the default model
    (`model`) and any a spec names (`spec.model`), loaded on demand, up to `models_loaded`
    at once, least recently used evicted first. Not thread-safe: one thread should own it."""

    def __init__(
        self,
        model: str,
        models_dir: Path,
        device: str | None = None,
        dtype: str | None = None,
        lora_cache_size: int = 8,
        lora_hotswap: bool | None = None,
        compile: bool = False,
        offload: bool = False,
        vae_tiling_above: int | None = None,
        cpu_threads: int | None = None,
        models_loaded: int | None = None,
        model_key: str | None = None,
    ) -> None:
        """`lora_hotswap` merges each LoRA stack into the UNet's weights in place instead
        of loading and deleting adapters, so that a compiled UNet never recompiles and a
        LoRA costs nothing per step; the UNet weights of `lora_cache_size` LoRAs stay
        cached on the device.
        `compile` torch.compiles the UNet and VAE decoder at load and turns hot-swap on
        unless `lora_hotswap` says otherwise. `offload` (CUDA only) keeps each model on
        the CPU until it runs, and rules out compile. Images of more than
        `vae_tiling_above` pixels are decoded in tiles. pipelines.tuning.plan_for decides
        what each setting means on this device; `plan` holds its answer (`cpu_threads`: by
        default all cores but one, which is left to the server).
        `models_loaded`: how many models stay loaded (default: 1 off CUDA; on CUDA as many
        as fit in 85% of the device's memory, by their parameters). `model_key`: the key
        the default model is known by (default: `model` itself), so that a spec naming it
        by ModelSpec uses the same pipeline."""
        if models_loaded is not None and models_loaded < 1:
            raise ValueError("models_loaded must be at least 1")
        self.model = model
        self.default_model = ModelSpec(model_key or model, model)
        self.models_dir = Path(models_dir)
        self.device = device or detect_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.plan = plan_for(
            self.device, self.dtype, compile=compile, offload=offload,
            lora_hotswap=lora_hotswap, vae_tiling_above=vae_tiling_above,
            cpu_threads=cpu_threads,
        )  # fmt: skip
        self.lora_cache_size = lora_cache_size
        self.lora_hotswap = self.plan.lora_hotswap
        self.models_loaded = models_loaded
        if models_loaded is None and not self.device.startswith("cuda"):
            self.models_loaded = 1
        # Least recently used first; `_active` is the one rendering (or that last rendered).
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._active: LoadedModel | None = None
        self._meta_fits: dict[str, LoraFit] = {}
        self.loads = 0  # models loaded so far, evicted ones included
        self.evictions = 0

    # What belongs to the active model, under the names it had when there was only one.
    @property
    def _pipe(self) -> Any:
        return None if self._active is None else self._active.pipe

    @property
    def _adapters(self) -> AdapterCache | HotswapAdapters:
        if self._active is None:
            return self._new_adapters()
        return self._active.adapters

    @property
    def _fit(self) -> LoraFit | None:
        return None if self._active is None else self._active.fit

    @property
    def _base_scheduler_config(self) -> Any:
        return None if self._active is None else self._active.base_scheduler_config

    @property
    def _schedulers(self) -> dict[str, Any]:
        assert self._active is not None
        return self._active.schedulers

    @property
    def pipeline(self) -> Any:
        """The active model's diffusers pipeline (the default after load()), or None."""
        return self._pipe

    @property
    def adapters(self) -> AdapterCache | HotswapAdapters:
        return self._adapters

    def _new_adapters(self) -> AdapterCache | HotswapAdapters:
        if self.lora_hotswap:
            return HotswapAdapters(self.lora_cache_size)
        return AdapterCache(self.lora_cache_size)

    @property
    def lora_compatibility(self) -> LoraFit:
        """`lora_compatibility(path)`: None if the LoRA file fits the default model, else a
        short reason. Reads only the file's header and the layer shapes recorded at load,
        so the server may call it from any thread; `.model_key` keys its verdicts."""
        self.load()
        return self.lora_compatibility_for(None)

    def unload_loras(self) -> None:
        """Remove every LoRA layer, loaded or cached, from the active model: its pipeline is
        again as loaded."""
        if self._active is not None:
            self._active.adapters.clear(self._active.pipe)
            self._active.pipe.unload_lora_weights()
            self._active.adapters = self._new_adapters()

    def load(self) -> None:
        """Load the default model onto the device and make it active; later calls do
        nothing."""
        if self._active is None:
            self._use(None)

    def close(self) -> None:
        """Nothing to end: the models stay loaded for the next load()."""

    def kill(self, reason: str) -> bool:
        """A render in this process cannot be ended from outside it."""
        return False

    @property
    def pid(self) -> int | None:
        return None  # renders in its caller's process

    def warmup(self, sizes: Iterable[tuple[int, int]], images: Iterable[int] = (1, 2)) -> None:
        """Render once per (width, height) and image count, so that compiled graphs, kernel
        choices and allocator pools exist before the first request. Two image counts:
        after a second batch size torch.compile makes the batch dimension dynamic, so
        every later count and batch reuses that graph (else a request for 2 images would
        compile for minutes)."""
        counts = tuple(images)
        for width, height in sizes:
            for count in counts:
                seeds = tuple(range(count))
                spec = GenerationSpec("warm-up", "", width, height, 2, 5.0, "euler", seeds)
                self.render(spec)

    def measure_speed(self, width: int = 512, height: int = 512, steps: int = 3) -> float:
        """Seconds per megapixel-step of one timed render on this device, text encoding
        and decoding included (so it errs on the slow side): the server's estimate until
        real jobs have been measured."""
        import time

        spec = GenerationSpec("speed", "", width, height, steps, 5.0, "euler", (0,))
        started = time.perf_counter()
        self.render(spec)
        return (time.perf_counter() - started) / (width * height / 1e6 * steps)

    def _place(self, pipe: Any) -> None:
        plan = self.plan
        if plan.vae_float32 and pipe.vae.config.force_upcast:
            pipe.vae.to(torch.float32)
        if plan.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        use_sdpa(pipe.unet)
        use_sdpa(pipe.vae)
        if plan.offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)

    def render(
        self,
        spec: GenerationSpec,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_latents: Callable[[int, Any], None] | None = None,
    ) -> list[Image.Image]:
        """Render spec's images (image i from seed i). on_step(step, spec.steps) runs once per
        step whatever the sampler's internal UNet calls; should_stop() is polled between those
        calls and makes this raise RenderInterrupted without decoding anything."""
        return self.render_batch([spec], on_step, should_stop, on_latents)[0]

    def render_batch(
        self,
        specs: Sequence[GenerationSpec],
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_latents: Callable[[int, Any], None] | None = None,
    ) -> list[list[Image.Image]]:
        """Render several specs of one batch_key in one denoising loop: the images of each
        spec, in order, as render(spec) would give them (prompts are encoded spec by spec,
        each image has its own seeded generator). on_step and should_stop as in render(),
        for the batch as a whole; on_latents(step, latents) sees the latents after each
        step (pipelines.progress.latent_previews makes pictures of them)."""
        if not specs:
            return []
        first = specs[0]
        if any(batch_key(spec) != batch_key(first) for spec in specs):
            raise ValueError("render_batch needs specs of one batch_key")
        self._use(first.model)
        pipe = self._pipe
        inpaint_unet.check_spec(pipe.unet, first)
        seeds = [seed for spec in specs for seed in spec.seeds]
        pipe.scheduler = self._scheduler(first.sampler, seeds)
        self._adapters.apply(pipe, first.loras)
        if self.plan.batch_invariant:
            pad_per_image_linears(pipe.unet)  # after apply: LoRA layers included
        if should_stop is not None and should_stop():
            raise RenderInterrupted()

        if first.image is not None:
            with torch.inference_mode():
                return img2img.render_img2img(self, specs, on_step, should_stop, on_latents)
        total = first.steps + (first.hires.steps if first.hires is not None else 0)
        steps = offset_steps(on_step, 0, total)
        progress = StepProgress(first.steps, steps, should_stop, on_latents)
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        per_image = len(seeds) if self.plan.batch_invariant else 1
        with torch.inference_mode(), unet_per_image(pipe.unet, per_image):
            latents = pipe(
                **self._encode(specs),
                width=first.width,
                height=first.height,
                num_inference_steps=first.steps,
                guidance_scale=first.cfg_scale,
                generator=generators,
                callback_on_step_end=progress,
                output_type="latent",
            ).images
            width, height = first.width, first.height
            if first.hires is not None:
                steps = offset_steps(on_step, first.steps, total)
                latents = img2img.hires_pass(self, specs, latents, steps, should_stop, on_latents)
                width, height = first.hires.width, first.hires.height
            images = iter(self._decode(latents, width * height))
        return [[next(images) for _ in spec.seeds] for spec in specs]

    def _encode(self, specs: Sequence[GenerationSpec]) -> dict[str, torch.Tensor | None]:
        """Each spec's prompts encoded on their own, as the pipeline would for that spec
        alone, then concatenated: an empty negative prompt stays None, so SDXL's
        force_zeros_for_empty_prompt gives it zeros as trained, beside encoded ones."""
        pipe = self._pipe
        guided = specs[0].cfg_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        parts = [
            pipe.encode_prompt(
                prompt=spec.prompt,
                device=pipe._execution_device,
                num_images_per_prompt=spec.num_images,
                do_classifier_free_guidance=guided,
                negative_prompt=spec.negative_prompt or None,
            )
            for spec in specs
        ]
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds")
        names += ("negative_pooled_prompt_embeds",)
        return {
            name: None if tensors[0] is None else torch.cat(tensors)
            for name, tensors in zip(names, zip(*parts, strict=True), strict=True)
        }

    def _decode(self, latents: torch.Tensor, pixels: int) -> list[Image.Image]:
        """What the pipeline's own decode does, image by image (a batch needs no more VAE
        memory than one image, and each image decodes exactly as it would alone), in the
        VAE's dtype (float32 where plan.vae_float32 upcast it)."""
        pipe = self._pipe
        vae = pipe.vae
        vae.use_tiling = pixels > self.plan.vae_tiling_above
        latents = unscale(vae, latents.to(device=pipe._execution_device, dtype=vae.dtype))
        decoded = torch.cat([vae.decode(one, return_dict=False)[0] for one in latents.split(1)])
        if pipe.watermark is not None:
            decoded = pipe.watermark.apply_watermark(decoded)
        if self.plan.offload:
            pipe.maybe_free_model_hooks()
        return list(pipe.image_processor.postprocess(decoded, output_type="pil"))

    def free_memory(self) -> None:
        """After an out-of-memory error or an eviction: drop what is no longer referenced."""
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def device_memory_bytes(self) -> int | None:
        """Device memory held by tensors now (CUDA only), for the metrics."""
        if self.device.startswith("cuda") and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated(self.device))
        return None

    def _scheduler(self, sampler: str, seeds: Sequence[int]) -> Any:
        """The cached scheduler of `sampler`, set up for this render: an SDE sampler's
        Brownian trees are seeded per image from `seeds` (and rebuilt every render)."""
        name = canonical_sampler(sampler) or sampler  # make_scheduler explains unknown names
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._base_scheduler_config)
        scheduler = self._schedulers[name]
        if hasattr(scheduler, "set_noise_seeds"):
            scheduler.set_noise_seeds(seeds)
        return scheduler
