"""GenerationSpec: the one value that crosses from server/ to pipelines/, and the Renderer
interface every renderer conforms to (pipelines.sdxl.SDXLRenderer, the server's
ProcessRenderer, the tests' fakes). No torch here: the server imports this module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    return (spec.width, spec.height, spec.steps, spec.cfg_scale, spec.sampler, stack, model)


class RenderInterrupted(Exception):
    """Raised by a pipeline when its stop flag was set between two denoising steps."""


StepCallback = Callable[[int, int], None]  # (step, total_steps)
StopCheck = Callable[[], bool]  # polled between steps: True stops the render
LatentsCallback = Callable[[int, Any], None]  # (step, latents) for previews


class Renderer(Protocol):
    """What the workers render with."""

    model: str
    device: str

    def load(self) -> None: ...

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
