"""The models a renderer holds: loaded on demand, up to a count or a memory budget, least
recently used evicted first; each with its own LoRA adapters, LoRA fit and samplers.
SDXLRenderer builds on it; one thread owns both."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines.lora_fit import LoraFit, short_reason
from pipelines.lora_hotswap import HotswapAdapters
from pipelines.loras import AdapterCache
from pipelines.model_files import (
    check_weights,
    configs_of,
    estimate_bytes,
    load_pipeline,
    meta_fit,
    own_weights,
    pipeline_bytes,
)
from pipelines.spec import ModelLoadError, ModelSpec

# On CUDA, by default, models stay loaded while their parameters fit in this share of memory.
CUDA_MEMORY_SHARE = 0.85


@dataclass
class LoadedModel:
    """One loaded pipeline and what belongs to it alone: its LoRA adapters, the layer
    shapes LoRAs are checked against, its samplers."""

    key: str
    source: str
    pipe: Any
    fit: LoraFit
    adapters: AdapterCache | HotswapAdapters
    base_scheduler_config: Any
    size_bytes: int
    schedulers: dict[str, Any] = field(default_factory=dict)
    img2img: Any = None  # its StableDiffusionXLImg2ImgPipeline (from_pipe: the same weights)


class ModelPool:
    """What SDXLRenderer knows about its models. SDXLRenderer sets these attributes and
    provides `_new_adapters()`, `_place(pipe)` and `free_memory()`."""

    _models: OrderedDict[str, LoadedModel]
    _active: LoadedModel | None
    _meta_fits: dict[str, LoraFit]
    default_model: ModelSpec
    models_loaded: int | None
    loads: int
    evictions: int
    device: str
    dtype: str
    models_dir: Any
    plan: Any

    @property
    def loaded_models(self) -> list[str]:
        """Keys of the loaded models, least recently used first."""
        return list(self._models)

    def model_key(self, model: ModelSpec | None) -> str:
        """The key a spec's model is held under (None: the default model's)."""
        return (model or self.default_model).key

    def is_loaded(self, model: ModelSpec | str | None) -> bool:
        """Whether rendering with `model` (a ModelSpec, a key, None: the default) needs no
        load. Cheap: a dict look-up."""
        key = model if isinstance(model, str) else self.model_key(model)
        return key in self._models

    def lora_compatibility_for(self, model: ModelSpec | None) -> LoraFit:
        """The LoraFit of `model` (None: the default). A loaded model's is the one taken at
        its load; for a local model not loaded, one is built from its configs alone (a
        single file's header, a folder's config.json files) on the meta device, with no
        weights read and nothing loaded or evicted. A hub id not loaded is loaded."""
        key = self.model_key(model)
        if key in self._models:
            return self._models[key].fit
        if key not in self._meta_fits:
            source = (model or self.default_model).source
            configs = configs_of(source, self.models_dir)
            if configs is None:
                return self._ensure_loaded(model or self.default_model).fit
            self._meta_fits[key] = meta_fit(configs)
        return self._meta_fits[key]

    def _use(self, model: ModelSpec | None) -> LoadedModel:
        """Make `model` the active one, loading it first if needed."""
        entry = self._ensure_loaded(model or self.default_model)
        self._models.move_to_end(entry.key)
        self._active = entry
        return entry

    def _ensure_loaded(self, model: ModelSpec) -> LoadedModel:
        if model.key in self._models:
            return self._models[model.key]
        try:
            self._make_room(estimate_bytes(model.source, self.models_dir, self.dtype))
            entry = self._load(model)
        except ModelLoadError as exc:
            self.free_memory()
            raise ModelLoadError(model.key, exc.reason) from exc
        except Exception as exc:
            self.free_memory()
            raise ModelLoadError(model.key, short_reason(exc, 200)) from exc
        self._models[model.key] = entry
        self._meta_fits.pop(model.key, None)
        self.loads += 1
        return entry

    def _make_room(self, needed: int) -> None:
        """Evict least recently used models until one more fits the count and the memory
        budget. The active model is evicted last (it is never rendering here: renders run
        one at a time on the thread that calls this)."""
        budget = self._memory_budget()
        while self._models:
            held = sum(entry.size_bytes for entry in self._models.values())
            over_count = self.models_loaded is not None and len(self._models) >= self.models_loaded
            over_memory = budget is not None and held + needed > budget
            if not (over_count or over_memory):
                return
            victims = [key for key in self._models if self._models[key] is not self._active]
            self.evict(victims[0] if victims else next(iter(self._models)))

    def evict(self, key: str) -> bool:
        """Unload model `key` and free its memory; False if it was not loaded."""
        entry = self._models.pop(key, None)
        if entry is None:
            return False
        if entry is self._active:
            self._active = None
        # Dropping every reference is all it takes (adapters and samplers die with it);
        # free_memory collects what reference cycles hold.
        entry.pipe = entry.adapters = entry.schedulers = None  # type: ignore[assignment]
        del entry
        self.evictions += 1
        self.free_memory()
        return True

    def _memory_budget(self) -> int | None:
        if self.models_loaded is not None or not self.device.startswith("cuda"):
            return None
        total = torch.cuda.get_device_properties(torch.device(self.device)).total_memory
        return int(total * CUDA_MEMORY_SHARE)

    def _load(self, model: ModelSpec) -> LoadedModel:
        torch.set_num_threads(self.plan.cpu_threads)
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        # Loading bars are noise in a server log.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        pipe = load_pipeline(
            model.source, self.models_dir, self.device, self.dtype, self.plan.offload
        )
        check_weights(model.key, pipe)
        if self.device == "cpu":
            own_weights(pipe)
        pipe.set_progress_bar_config(disable=True)
        self._place(pipe)
        # Before any adapter wraps a layer: the shapes LoRA files are checked against.
        fit = LoraFit(pipe)
        if self.plan.compile:
            pipe.unet.compile(backend=self.plan.compile_backend)
            pipe.vae.decoder.compile(backend=self.plan.compile_backend)
        # Every sampler is built from base_scheduler_config, however often the scheduler is
        # swapped later.
        return LoadedModel(
            key=model.key, source=model.source, pipe=pipe, fit=fit,
            adapters=self._new_adapters(), base_scheduler_config=pipe.scheduler.config,
            size_bytes=pipeline_bytes(pipe),
        )  # fmt: skip
