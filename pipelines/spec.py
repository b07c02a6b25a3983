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


class RenderInterrupted(Exception):
    """Raised by a pipeline when its stop flag was set between two denoising steps."""
