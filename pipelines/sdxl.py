"""SDXL text-to-image rendering with diffusers: one loaded pipeline, samplers, LoRA stacks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipelines.lora_fit import LoraFit
from pipelines.lora_hotswap import HotswapAdapters
from pipelines.loras import AdapterCache
from pipelines.samplers import canonical_sampler, make_scheduler
from pipelines.spec import GenerationSpec, RenderInterrupted
from pipelines.tiny import ensure_tiny_model

if TYPE_CHECKING:
    from PIL import Image

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
TINY = "tiny"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

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


class SDXLRenderer:
    """Loads one SDXL pipeline and renders GenerationSpecs with it. Not thread-safe:
    one thread should own it."""

    def __init__(
        self,
        model: str,
        models_dir: Path,
        device: str | None = None,
        dtype: str | None = None,
        lora_cache_size: int = 8,
        lora_hotswap: bool = False,
        lora_max_rank: int = 64,
    ) -> None:
        """`lora_hotswap` keeps `lora_cache_size` fixed adapter slots of rank
        `lora_max_rank` on the UNet instead of loading and deleting adapters, so that a
        compiled UNet never recompiles; LoRAs of a higher rank are then incompatible."""
        self.model = model
        self.models_dir = Path(models_dir)
        self.device = device or detect_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.lora_cache_size = lora_cache_size
        self.lora_hotswap = lora_hotswap
        self.lora_max_rank = lora_max_rank
        self._adapters = self._new_adapters()
        self._fit: LoraFit | None = None
        self._pipe: Any = None
        self._base_scheduler_config: Any = None
        self._schedulers: dict[str, Any] = {}

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline, or None before load()."""
        return self._pipe

    @property
    def adapters(self) -> AdapterCache | HotswapAdapters:
        return self._adapters

    def _new_adapters(self) -> AdapterCache | HotswapAdapters:
        if self.lora_hotswap:
            return HotswapAdapters(self.lora_cache_size, self.lora_max_rank)
        return AdapterCache(self.lora_cache_size)

    @property
    def lora_compatibility(self) -> LoraFit:
        """`lora_compatibility(path)`: None if the LoRA file fits the loaded model, else a
        short reason. Reads only the file's header and the layer shapes recorded at load,
        so the server may call it from any thread; `.model_key` keys its verdicts."""
        self.load()
        assert self._fit is not None
        return self._fit

    def unload_loras(self) -> None:
        """Remove every LoRA layer, loaded or cached: the pipeline is again as loaded."""
        if self._pipe is not None:
            self._adapters.clear(self._pipe)
            self._pipe.unload_lora_weights()
            self._adapters = self._new_adapters()

    def load(self) -> None:
        """Load the model onto the device; later calls do nothing."""
        if self._pipe is not None:
            return
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        # Loading bars are noise in a server log.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        pipe = self._from_source()
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.device)
        # Every sampler is built from this, however often the scheduler is swapped later.
        self._base_scheduler_config = pipe.scheduler.config
        # Before any adapter wraps a layer: the shapes LoRA files are checked against.
        self._fit = LoraFit(pipe, max_rank=self.lora_max_rank if self.lora_hotswap else None)
        if isinstance(self._adapters, HotswapAdapters):
            self._adapters.prepare(pipe)
        self._pipe = pipe

    def render(
        self,
        spec: GenerationSpec,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Image.Image]:
        """Render spec's images (image i from seed i). on_step(step, spec.steps) runs once per
        step whatever the sampler's internal UNet calls; should_stop() is polled between those
        calls and makes this raise RenderInterrupted without decoding anything."""
        self.load()
        pipe = self._pipe
        pipe.scheduler = self._scheduler(spec.sampler)
        self._adapters.apply(pipe, spec.loras)
        if should_stop is not None and should_stop():
            raise RenderInterrupted()

        progress = _StepProgress(spec.steps, on_step, should_stop)
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in spec.seeds]
        with torch.inference_mode():
            result = pipe(
                prompt=spec.prompt,
                # None, not "", so SDXL's force_zeros_for_empty_prompt applies as trained.
                negative_prompt=spec.negative_prompt or None,
                width=spec.width,
                height=spec.height,
                num_inference_steps=spec.steps,
                guidance_scale=spec.cfg_scale,
                num_images_per_prompt=spec.num_images,
                generator=generators,
                callback_on_step_end=progress,
            )
        return list(result.images)

    def free_memory(self) -> None:
        """After an out-of-memory error: drop what the failed render left cached."""
        import gc

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _scheduler(self, sampler: str) -> Any:
        name = canonical_sampler(sampler) or sampler  # make_scheduler explains unknown names
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._base_scheduler_config)
        return self._schedulers[name]

    def _from_source(self) -> Any:
        from diffusers import StableDiffusionXLPipeline

        dtype = _dtype_kwargs(getattr(torch, self.dtype))
        if self.model == TINY:
            folder = ensure_tiny_model(self.models_dir)
            return StableDiffusionXLPipeline.from_pretrained(folder, **dtype)
        local = self._local_path()
        if local is not None and local.is_dir():
            return StableDiffusionXLPipeline.from_pretrained(local, **dtype)
        if local is not None:
            return StableDiffusionXLPipeline.from_single_file(str(local), **dtype)
        if self.device.startswith("cuda") and self.dtype != "float32":
            try:
                return StableDiffusionXLPipeline.from_pretrained(
                    self.model, variant="fp16", **dtype
                )
            except (OSError, ValueError):
                pass  # the repo has no fp16 variant: load its default weights
        return StableDiffusionXLPipeline.from_pretrained(self.model, **dtype)

    def _local_path(self) -> Path | None:
        """The local folder or checkpoint file `model` names, as given or under checkpoints/."""
        given = Path(self.model).expanduser()
        for candidate in (given, self.models_dir / "checkpoints" / self.model):
            if candidate.is_dir():
                return candidate
            if candidate.is_file():
                if candidate.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                    raise ValueError(f"model file {candidate} is not a .safetensors or .ckpt file")
                return candidate
        return None


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    from diffusers.utils import deprecation_utils

    # Recent diffusers renamed torch_dtype to dtype (0.42 warns on the old name);
    # older releases only know torch_dtype.
    if hasattr(deprecation_utils, "_resolve_dtype"):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


class _StepProgress:
    """callback_on_step_end for diffusers: maps the pipeline's loop iterations (2 per step
    minus one for heun/dpm2, steps + 1 for pndm) onto 1..steps, and stops on request."""

    def __init__(
        self,
        steps: int,
        on_step: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.steps = steps
        self.on_step = on_step
        self.should_stop = should_stop
        self.reported = 0

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict) -> dict:
        iterations = max(int(getattr(pipe, "num_timesteps", 0) or 0), 1)
        done = min(self.steps, -(-(index + 1) * self.steps // iterations))
        while self.on_step is not None and self.reported < done:
            self.reported += 1
            self.on_step(self.reported, self.steps)
        if self.should_stop is not None and self.should_stop():
            # diffusers' own interrupt flag (pipe._interrupt) only skips the remaining steps
            # and then still decodes; raising here leaves before the VAE runs.
            raise RenderInterrupted()
        return tensors
