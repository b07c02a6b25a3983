"""GenerationSpec: the one value that crosses from server/ to pipelines/."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a stack: `key` is a stable adapter name (the file's content hash)."""

    key: str
    path: str
    weight: float


@dataclass(frozen=True)
class GenerationSpec:
    """Everything a pipeline needs to render one request, already validated.

    `sampler` is a canonical name from pipelines.samplers; `seeds` holds one seed
    per image (image i of a request uses seed + i).
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

    @property
    def num_images(self) -> int:
        return len(self.seeds)


def batch_key(spec: GenerationSpec) -> tuple:
    """Specs with equal keys can share one denoising loop (SDXLRenderer.render_batch): same
    size, steps, guidance, sampler and effective LoRA stack; prompts and seeds may differ."""
    from pipelines.loras import effective_stack  # it imports this module

    stack = tuple((lora.key, weight) for lora, weight in effective_stack(spec.loras))
    return (spec.width, spec.height, spec.steps, spec.cfg_scale, spec.sampler, stack)


class RenderInterrupted(Exception):
    """Raised by a pipeline when its stop flag was set between two denoising steps."""
