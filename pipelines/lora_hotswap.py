"""LoRA stacks for a compiled UNet: one fixed adapter holds the whole stack, so no switch
adds or removes a module, changes a shape, or changes a value that compiled code guards on.

The adapter is a rank-`max_rank` LoRA on every Linear and Conv2d layer of the UNet,
created once, before torch.compile. A stack is written into it side by side along the
rank: each LoRA's down weights fill the next rows of A, its up weights times its
alpha/rank scale and request weight the same columns of B, the rest stays zero. So a
stack costs one rank-`max_rank` product per layer however many LoRAs it holds (separate
always-on slots cost one per slot: 8 slots of rank 64 made the tiny model's render 7x
slower). With no LoRA the adapter is switched off and the UNet computes only its own
layers; compiled code then has two graphs, LoRA off and LoRA on, and `engaged()` lets a
warm-up compile the second before any request needs it.

This is what diffusers' `enable_lora_hotswap` / `load_lora_weights(hotswap=True)` do for
one LoRA, done here because those hold one LoRA, delete the slot when a swap fails, and
cannot swap text encoders. Text encoders (not compiled) get ordinary adapters, cached as
in AdapterCache.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipelines.lora_fit import model_layers
from pipelines.loras import LoraLoadError, _summary, adapter_name, effective_stack, read_lora
from pipelines.spec import LoraSpec

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
ADAPTER = "hotswap"
# module -> (down, up x alpha/rank) on the UNet's device, ready to copy into the adapter
UnetWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


class StackTooLarge(ValueError):
    """The LoRAs of one request add up to more rank than the adapter holds."""


class HotswapAdapters:
    """Same interface as AdapterCache: `apply(pipe, loras)` activates exactly that stack.
    The UNet weights of up to `capacity` LoRAs stay on the device, least recently used
    evicted, so switching between cached LoRAs reads no file."""

    def __init__(self, capacity: int = 8, max_rank: int = 128, text_capacity: int = 8) -> None:
        if capacity < 1 or max_rank < 1:
            raise ValueError("hot-swap needs a cache of at least 1 and a rank of at least 1")
        self.capacity = capacity
        self.max_rank = max_rank
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, UnetWeights] = OrderedDict()
        self._written: tuple[tuple[str, float], ...] = ()  # the stack the adapter holds
        self._dirty: set[str] = set()  # modules with non-zero adapter weights
        self._enabled: bool | None = None
        self._engaged = False
        self._text = _TextAdapters(text_capacity)
        self._layers: dict[str, Any] | None = None

    @property
    def loaded_keys(self) -> list[str]:
        """Keys of the cached LoRAs, least recently used first."""
        return list(self._cache)

    def prepare(self, pipe: Any) -> None:
        """Create the adapter, switched off; call before compiling the UNet. Later calls do
        nothing."""
        if self._layers is not None:
            return
        from peft import LoraConfig

        unet = pipe.unet
        targets = sorted(model_layers(pipe)["unet"])
        config = LoraConfig(r=self.max_rank, lora_alpha=self.max_rank, target_modules=targets)
        unet.add_adapter(config, adapter_name=ADAPTER)
        self._layers = {name: unet.get_submodule(name) for name in targets}
        with torch.no_grad():
            for layer in self._layers.values():
                layer.lora_A[ADAPTER].weight.zero_()
                layer.lora_B[ADAPTER].weight.zero_()
        self._enable(False)

    def apply(self, pipe: Any, loras: tuple[LoraSpec, ...]) -> None:
        self.prepare(pipe)
        stack = effective_stack(loras)
        weights = [(self._weights(pipe, lora), weight) for lora, weight in stack]
        written = tuple((lora.key, weight) for lora, weight in stack)
        if written != self._written:
            self._write(weights)  # checks the ranks before it changes anything
            self._written = written
        self._text.apply(pipe, stack)
        self._enable(bool(stack) or self._engaged)

    def clear(self, pipe: Any) -> None:
        """Empty the adapter (it stays, switched off), the cache and the text encoders."""
        self._write([])
        self._written = ()
        self._cache.clear()
        self._enable(False)
        self._text.clear(pipe)

    @contextmanager
    def engaged(self) -> Iterator[None]:
        """Keep the adapter switched on even for no LoRA (it adds exact zeros then), so that
        a warm-up render compiles the LoRA-on graph."""
        self._engaged = True
        try:
            yield
        finally:
            self._engaged = False

    def _enable(self, on: bool) -> None:
        if self._enabled == on:
            return
        assert self._layers is not None
        for layer in self._layers.values():
            layer.enable_adapters(on)
            if on:
                layer.set_adapter(ADAPTER, inference_mode=True)
        self._enabled = on

    def _write(self, stack: list[tuple[UnetWeights, float]]) -> None:
        ranks: Counter[str] = Counter()
        for weights, _ in stack:
            for module, (down, _up) in weights.items():
                ranks[module] += down.shape[0]
        if ranks and max(ranks.values()) > self.max_rank:
            module, rank = ranks.most_common(1)[0]
            raise StackTooLarge(
                f"these LoRAs add up to rank {rank} at UNet layer {module}, above this "
                f"server's hot-swap rank of {self.max_rank}"
            )
        assert self._layers is not None
        with torch.no_grad():
            for module in self._dirty:
                self._layers[module].lora_A[ADAPTER].weight.zero_()
                self._layers[module].lora_B[ADAPTER].weight.zero_()
            offsets: Counter[str] = Counter()
            for weights, weight in stack:
                for module, (down, up) in weights.items():
                    layer, start = self._layers[module], offsets[module]
                    end = start + down.shape[0]
                    layer.lora_A[ADAPTER].weight[start:end].copy_(down)
                    layer.lora_B[ADAPTER].weight[:, start:end].copy_(up * weight)
                    offsets[module] = end
        self._dirty = set(offsets)

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
        them up; raises LoraLoadError for anything the adapter cannot hold."""
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
            raise LoraLoadError(lora.key, "DoRA and LoRA biases cannot be hot-swapped")
        assert self._layers is not None
        weights = {}
        for key, down in part.items():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0]
            up = part.get(f"{module}.lora_B.weight")
            layer = self._layers.get(module)
            slot_a = layer.lora_A[ADAPTER].weight if layer is not None else None
            if up is None or slot_a is None or down.shape[1:] != slot_a.shape[1:]:
                raise LoraLoadError(lora.key, f"layer {module} does not fit this model")
            if down.shape[0] > self.max_rank:
                raise LoraLoadError(
                    lora.key, f"rank {down.shape[0]} is above the hot-swap limit {self.max_rank}"
                )
            r = config.rank_pattern.get(
                get_pattern_key(config.rank_pattern.keys(), module), config.r
            )
            alpha = config.alpha_pattern.get(
                get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha
            )
            scale = alpha / (math.sqrt(r) if config.use_rslora else r)
            weights[module] = (down.to(slot_a), up.to(slot_a) * scale)
        return weights


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
