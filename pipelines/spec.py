"""GenerationSpec: the one value that crosses from server/ to pipelines/, and the Renderer
interface every renderer conforms to (pipelines.sdxl.SDXLRenderer, the server's
ProcessRenderer, the tests' fakes). No torch here: the server imports this module."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
