"""GenerationSpec: the one value that crosses from server/ to pipelines/, and the Renderer
interface every renderer conforms to (pipelines.sdxl.SDXLRenderer, the server's
ProcessRenderer, the tests' fakes). No torch here: the server imports this module."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a stack: `key` is a stable adapter name (the file's content hash)."""

    key: str
    path: str
    weight: float


@dataclass(frozen=True)
class ModelSpec:
    """The checkpoint a request renders with. `key` is its stable id (the server's content
    hash): the renderer holds one pipeline per key. `source` is what to load: a diffusers
    folder or a single-file .safetensors path, `tiny`, or a hub id."""

    key: str
    source: str


class ModelLoadError(Exception):
    """A model could not be loaded (unreadable, truncated, wrong keys, not SDXL); the
    renderer is left as it was, every other model still usable."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"could not load model {model}: {reason}")
        self.model = model
        self.reason = reason

    def __reduce__(self) -> tuple:
        return (ModelLoadError, (self.model, self.reason))  # it crosses the render process's pipe


# AUTOMATIC1111's resize modes and inpainting fills, by number as its API takes them.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {  # name -> (interpolation, antialias)
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")
# A VAE encode in denoising steps of the same size, for time estimates: on SDXL an encode
# takes about what one UNet step with classifier-free guidance does. (A decode, about twice
# that, is part of every render, so the measured speed holds it already.)
VAE_ENCODE_STEPS = 1.0


@dataclass(frozen=True)
class ImageInput:
    """An image-to-image render's start: `init_image` and `mask` are paths of image files
    the renderer reads (the server's vault), already decoded and checked by the server;
    the rest is AUTOMATIC1111's img2img settings, with its meanings."""

    init_image: str
    denoising_strength: float = 0.75
    resize_mode: int = 0
    mask: str | None = None
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False

    def steps_run(self, steps: int) -> int:
        """AUTOMATIC1111: the last ceil(steps * strength) steps of the schedule; none when
        steps * strength < 1 (the init image comes back through the VAE)."""
        product = steps * self.denoising_strength
        return 0 if product < 1 else min(steps, math.ceil(product - 1e-9))


@dataclass(frozen=True)
class HiresFix:
    """txt2img's second pass: upscale the first pass to `width` x `height` with `upscaler`
    (a LATENT_UPSCALERS or IMAGE_UPSCALERS name), then denoise exactly `steps` steps of a
    schedule stretched to steps / denoising_strength, as AUTOMATIC1111 does. `sampler`,
    `prompt`, `negative_prompt`: None means the first pass's."""

    width: int
    height: int
    upscaler: str
    steps: int
    denoising_strength: float
    sampler: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None


def hires_size(
    width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0
) -> tuple[int, int]:
    """AUTOMATIC1111's hires target: `resize_x`/`resize_y` when given (one of them alone keeps
    the aspect ratio), else the base size times `scale`; rounded down to multiples of 8."""
    if resize_x <= 0 and resize_y <= 0:
        x, y = int(width * scale), int(height * scale)
    elif resize_y <= 0:
        x, y = resize_x, resize_x * height // width
    elif resize_x <= 0:
        x, y = resize_y * width // height, resize_y
    else:
        x, y = resize_x, resize_y
    return max(8, x // 8 * 8), max(8, y // 8 * 8)


@dataclass(frozen=True)
class GenerationSpec:
    """Everything a pipeline needs to render one request, already validated.

    `sampler` is a canonical name from pipelines.samplers; `seeds` holds one seed
    per image (image i of a request uses seed + i). `model` None means the renderer's
    default model (`--model`).
    """

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str
    seeds: tuple[int, ...]
    loras: tuple[LoraSpec, ...] = field(default=())
    model: ModelSpec | None = None
    image: ImageInput | None = None
    hires: HiresFix | None = None

    @property
    def total_steps(self) -> int:
        """The steps a render reports (on_step's total): those run, both passes of a hires
        fix, the last ceil(steps * strength) of an img2img."""
        steps = self.steps if self.image is None else self.image.steps_run(self.steps)
        return steps + (self.hires.steps if self.hires is not None else 0)

    @property
    def pixel_steps(self) -> int:
        """Pixels times denoising steps actually run, per image: what a render costs (both
        passes of a hires fix; an img2img only the steps its strength runs)."""
        steps = self.steps if self.image is None else self.image.steps_run(self.steps)
        done = self.width * self.height * steps
        if self.hires is not None:
            done += self.hires.width * self.hires.height * self.hires.steps
        return done

    @property
    def base_steps_run(self) -> float:
        """pixel_steps as steps at the base size: what credits count per image."""
        return self.pixel_steps / (self.width * self.height)

    @property
    def work_pixel_steps(self) -> float:
        """pixel_steps plus the VAE encodes an image-to-image adds (the init image's, and a
        hires fix's through an image upscaler), each counted as VAE_ENCODE_STEPS steps at
        its size: what the queue's time estimate and fair share weigh (the cost does not)."""
        work = float(self.pixel_steps)
        if self.image is not None:
            work += VAE_ENCODE_STEPS * self.width * self.height
        if self.hires is not None and self.hires.upscaler not in LATENT_UPSCALERS:
            work += VAE_ENCODE_STEPS * self.hires.width * self.hires.height
        return work

    @property
    def num_images(self) -> int:
        return len(self.seeds)


def effective_stack(loras: tuple[LoraSpec, ...]) -> list[tuple[LoraSpec, float]]:
    """The LoRAs that change the image, in request order, weights of repeated keys summed."""
    weights: dict[str, float] = {}
    first: dict[str, LoraSpec] = {}
    for lora in loras:
        first.setdefault(lora.key, lora)
        weights[lora.key] = weights.get(lora.key, 0.0) + lora.weight
    return [(first[key], weight) for key, weight in weights.items() if weight != 0]


def batch_key(spec: GenerationSpec) -> tuple:
    """Specs with equal keys can share one denoising loop (SDXLRenderer.render_batch): same
    size, steps, guidance, sampler, model and effective LoRA stack; prompts and seeds may
    differ. A spec naming no model and one naming the default model by its key do not
    batch together (the queue cannot tell them apart without the renderer). The server's
    queue batches by this key too (server/jobs/specs.py): the one rule."""
    stack = tuple((lora.key, weight) for lora, weight in effective_stack(spec.loras))
    model = spec.model.key if spec.model is not None else None
    # An img2img shares a loop only with the same kind of img2img (its images may differ).
    image = None
    if spec.image is not None:
        image = replace(spec.image, init_image="", mask=spec.image.mask and "")
    shape = (spec.width, spec.height, spec.steps, spec.cfg_scale, spec.sampler, stack, model)
    return (*shape, image, spec.hires)


class RenderInterrupted(Exception):
    """Raised by a pipeline when its stop flag was set between two denoising steps."""


StepCallback = Callable[[int, int], None]  # (step, total_steps)
StopCheck = Callable[[], bool]  # polled between steps: True stops the render
LatentsCallback = Callable[[int, Any], None]  # (step, latents) for previews


class RenderPlan(Protocol):
    """What the server reads of a renderer's device plan (pipelines.tuning.Plan)."""

    max_batch: int


class AdapterCounts(Protocol):
    """The renderer's LoRA cache counts, for the metrics."""

    hits: int
    misses: int


LoraCheck = Callable[[str], "str | None"]  # a LoRA file's path -> why it does not fit, or None


class Renderer(Protocol):
    """What the workers render with: every method and attribute the server uses (it never
    probes for one). Implemented by pipelines.sdxl.SDXLRenderer, the server's
    ProcessRenderer (the same in a child process) and the tests' fakes."""

    model: str
    device: str
    plan: RenderPlan
    adapters: AdapterCounts

    @property
    def loaded_models(self) -> list[str]:
        """The keys of the models held now, least recently used first."""
        ...

    @property
    def lora_compatibility(self) -> LoraCheck | None:
        """Judges LoRA files against the default model; None: judge none."""
        ...

    @property
    def pid(self) -> int | None:
        """The process rendering (None: this one)."""
        ...

    def load(self) -> None: ...

    def close(self) -> None:
        """Release the renderer (end its process); load() starts it again."""
        ...

    def kill(self, reason: str) -> bool:
        """From another thread, end a render that does not answer, at once: its call
        raises. False if this renderer cannot be killed (it renders in this process)."""
        ...

    def model_key(self, model: ModelSpec | None) -> str | None:
        """The key a model is held under (None: the default's)."""
        ...

    def warmup(self, sizes: Iterable[tuple[int, int]], images: Iterable[int] = (1, 2)) -> None:
        """Render once per size and image count (compiled graphs, kernel choices)."""
        ...

    def measure_speed(self, width: int = 512, height: int = 512, steps: int = 3) -> float | None:
        """Seconds per megapixel-step of one timed render (None: not measurable)."""
        ...

    def free_memory(self) -> None: ...

    def device_memory_bytes(self) -> int | None: ...

    def render(
        self,
        spec: GenerationSpec,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[Image.Image]: ...

    def render_batch(
        self,
        specs: list[GenerationSpec],
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[list[Image.Image]]: ...
