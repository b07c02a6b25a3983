"""LoRA stacks merged into the UNet's weights (on CUDA, and for any compiled UNet): no
module is added or removed and no shape or guarded value changes, so a switch never
recompiles, and a LoRA costs nothing per step.

A stack's UNet layers are merged as ComfyUI and AUTOMATIC1111 do it: W = W0 + sum of
weight x alpha/rank x up @ down, computed in float32 from a copy of each layer's original
weight W0 (kept on the device the first time a LoRA touches the layer) and written into
the parameter in place. No LoRA restores W0 bit for bit. Measured on an H200 (SDXL,
1024 px, 30 steps): one rank-128 adapter on every layer, the other way to keep compiled
code fixed, made a LoRA render 2.1x slower than none. Text encoders (not compiled) get
ordinary adapters, cached as in AdapterCache.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from pipelines.loras import LoraLoadError, _summary, adapter_name, effective_stack, read_lora
from pipelines.spec import LoraSpec

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# module -> (down, up x alpha/rank), each flattened to a matrix, on the UNet's device
UnetWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


class HotswapAdapters:
    """Same interface as AdapterCache: `apply(pipe, loras)` activates exactly that stack.
    The UNet weights of up to `capacity` LoRAs stay on the device, least recently used
    evicted, so switching between cached LoRAs reads no file."""

    def __init__(self, capacity: int = 8, text_capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError("LoRA cache capacity must be at least 1")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, UnetWeights] = OrderedDict()
        self._merged: tuple[tuple[str, float], ...] = ()  # the stack in the weights now
        self._originals: dict[str, torch.Tensor] = {}  # module -> W0
        self._changed: set[str] = set()  # modules whose weight is not W0 now
        self._text = _TextAdapters(text_capacity)

    @property
    def loaded_keys(self) -> list[str]:
        """Keys of the cached LoRAs, least recently used first."""
        return list(self._cache)

    def apply(self, pipe: Any, loras: tuple[LoraSpec, ...]) -> None:
        stack = effective_stack(loras)
        weights = [(self._weights(pipe, lora), weight) for lora, weight in stack]
        merged = tuple((lora.key, weight) for lora, weight in stack)
        if merged != self._merged:
            self._merge(pipe.unet, weights)
            self._merged = merged
        self._text.apply(pipe, stack)

    def clear(self, pipe: Any) -> None:
        """Restore every UNet weight, forget the cache, unload the text-encoder adapters."""
        self._merge(pipe.unet, [])
        self._merged = ()
        self._cache.clear()
        self._text.clear(pipe)

    def _merge(self, unet: Any, stack: list[tuple[UnetWeights, float]]) -> None:
        modules = {module for weights, _ in stack for module in weights}
        with torch.no_grad():
            for module in sorted(self._changed | modules):
                parameter = unet.get_submodule(module).weight
                original = self._originals.setdefault(module, parameter.detach().clone())
                if module not in modules:
                    parameter.copy_(original)
                    continue
                total = original.float().flatten(1)
                for weights, weight in stack:
                    if module in weights:
                        down, up = weights[module]
                        total = total.addmm(up.float(), down.float(), alpha=weight)
                parameter.copy_(total.view_as(parameter))
        self._changed = modules

    def _weights(self, pipe: Any, lora: LoraSpec) -> UnetWeights:
        if lora.key in self._cache:
            self.hits += 1
            self._cache.move_to_end(lora.key)
            return self._cache[lora.key]
        try:
            weights = self._unet_weights(pipe, lora)
        except LoraLoadError:
            raise
        except Exception as exc:
            raise LoraLoadError(lora.key, _summary(exc)) from exc
        self.misses += 1
        self._cache[lora.key] = weights
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return weights

    def _unet_weights(self, pipe: Any, lora: LoraSpec) -> UnetWeights:
        """module -> (down, up x alpha/rank) of the LoRA's UNet layers, as PEFT would set
        them up; raises LoraLoadError for anything that cannot be merged."""
        from diffusers.utils.peft_utils import get_peft_kwargs
        from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
        from peft import LoraConfig
        from peft.utils.other import get_pattern_key

        path = Path(lora.path)
        if not path.is_file():
            raise LoraLoadError(lora.key, f"file not found: {path}")
        state, metadata = read_lora(path)
        state, alphas = type(pipe).lora_state_dict(state, unet_config=pipe.unet.config)
        part = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        if part and "lora_A" not in next(iter(part)):
            part = convert_unet_state_dict_to_peft(part)
        self._text.stage(lora.key, state, alphas, metadata)
        if not part:
            return {}
        if metadata and any(k.startswith("unet.") for k in metadata):
            kwargs = {
                k.removeprefix("unet."): v for k, v in metadata.items() if k.startswith("unet.")
            }
        else:
            ranks = {f"^{k}": v.shape[1] for k, v in part.items() if "lora_B" in k and v.ndim > 1}
            unet_alphas = {
                k.removeprefix("unet."): v
                for k, v in (alphas or {}).items()
                if k.startswith("unet.")
            }
            kwargs = get_peft_kwargs(ranks, unet_alphas or None, part, is_unet=True)
        config = LoraConfig(**kwargs)
        if config.use_dora or config.lora_bias:
            raise LoraLoadError(lora.key, "DoRA and LoRA biases cannot be merged into the weights")
        weights = {}
        for key, down in part.items():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0]
            up = part.get(f"{module}.lora_B.weight")
            try:
                layer = pipe.unet.get_submodule(module)
            except AttributeError:
                layer = None
            target = getattr(layer, "weight", None)
            if up is None or target is None or not _fits(down, up, target):
                raise LoraLoadError(lora.key, f"layer {module} does not fit this model")
            r = config.rank_pattern.get(
                get_pattern_key(config.rank_pattern.keys(), module), config.r
            )
            alpha = config.alpha_pattern.get(
                get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha
            )
            scale = alpha / (math.sqrt(r) if config.use_rslora else r)
            device = target.device
            weights[module] = (
                down.flatten(1).to(device, torch.float32),
                up.flatten(1).to(device, torch.float32) * scale,
            )
        return weights


def _fits(down: torch.Tensor, up: torch.Tensor, weight: torch.Tensor) -> bool:
    """up @ down has the layer's shape: down is (rank, in[, kh, kw]), up (out, rank[, 1, 1])."""
    if up.ndim == 4 and up.shape[2:] != (1, 1):
        return False
    rank = down.shape[0]
    return up.shape[:2] == (weight.shape[0], rank) and down.shape[1:] == weight.shape[1:]


class _TextAdapters:
    """The text-encoder layers of LoRAs as ordinary adapters, least recently used evicted
    (the text encoders are not compiled, and diffusers cannot hot-swap them)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1)
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> LoRA key
        self._without: set[str] = set()  # keys of LoRAs with no text-encoder layers
        self._staged: dict[str, tuple[dict, Any, Any]] = {}

    def stage(self, key: str, state: dict, alphas: Any, metadata: Any) -> None:
        """Keep the text-encoder part of a state dict just read, for the load that follows."""
        part = {k: v for k, v in state.items() if k.startswith(TEXT_ENCODERS)}
        if part:
            self._staged[key] = (part, alphas, metadata)
        else:
            self._without.add(key)

    def apply(self, pipe: Any, stack: list[tuple[LoraSpec, float]]) -> None:
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        stack = [(lora, weight) for lora, weight in stack if lora.key not in self._without]
        names = [adapter_name(lora.key) for lora, _ in stack]
        for (lora, _), name in zip(stack, names, strict=True):
            if name in self._loaded:
                self._loaded.move_to_end(name)
            else:
                self._evict(pipe, keep=set(names), room_for=1)
                self._load(pipe, lora, name)
        self._evict(pipe, keep=set(names), room_for=0)
        weights = dict(zip(names, (weight for _, weight in stack), strict=True))
        for encoder in _encoders(pipe):
            present = [
                name for name in names if name in (getattr(encoder, "peft_config", None) or {})
            ]
            if present:
                set_adapters_for_text_encoder(present, encoder, [weights[n] for n in present])
                enable_lora_for_text_encoder(encoder)
            elif getattr(encoder, "peft_config", None):
                disable_lora_for_text_encoder(encoder)

    def clear(self, pipe: Any) -> None:
        _delete_text_adapters(pipe, list(self._loaded))
        self._loaded.clear()

    def _load(self, pipe: Any, lora: LoraSpec, name: str) -> None:
        try:
            part, alphas, metadata = self._staged.pop(lora.key, None) or _text_part(pipe, lora)
            if not part:
                self._without.add(lora.key)
                return
            for component in TEXT_ENCODERS:
                if getattr(pipe, component, None) is not None:
                    type(pipe).load_lora_into_text_encoder(
                        part, network_alphas=alphas, text_encoder=getattr(pipe, component),
                        prefix=component, adapter_name=name, _pipeline=pipe, metadata=metadata,
                    )  # fmt: skip
        except Exception as exc:
            _delete_text_adapters(pipe, [name])
            raise LoraLoadError(lora.key, _summary(exc)) from exc
        self._loaded[name] = lora.key

    def _evict(self, pipe: Any, keep: set[str], room_for: int) -> None:
        evictable = [name for name in self._loaded if name not in keep]
        victims = evictable[: max(len(self._loaded) + room_for - self.capacity, 0)]
        _delete_text_adapters(pipe, victims)
        for name in victims:
            del self._loaded[name]


def _text_part(pipe: Any, lora: LoraSpec) -> tuple[dict, Any, Any]:
    state, metadata = read_lora(Path(lora.path))
    state, alphas = type(pipe).lora_state_dict(state, unet_config=pipe.unet.config)
    return {k: v for k, v in state.items() if k.startswith(TEXT_ENCODERS)}, alphas, metadata


def _encoders(pipe: Any) -> list[Any]:
    return [getattr(pipe, c) for c in TEXT_ENCODERS if getattr(pipe, c, None) is not None]


def _delete_text_adapters(pipe: Any, names: list[str]) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for encoder in _encoders(pipe):
        present = [n for n in names if n in (getattr(encoder, "peft_config", None) or {})]
        if not present:
            continue
        # Deleting an active adapter makes PEFT activate (and warn about) another one.
        for module in encoder.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([])
        for name in present:
            delete_adapter_layers(encoder, name)
