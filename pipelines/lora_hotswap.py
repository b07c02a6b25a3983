"""LoRA stacks for a compiled UNet: weights are copied into fixed adapter slots, so no
switch adds or removes a module, changes a shape, or changes a Python value that
compiled code guards on.

Each slot is a rank-`max_rank` adapter on every Linear and Conv2d layer of the UNet,
created once (before torch.compile) and always active. A LoRA is copied into a free slot,
zero-padded to `max_rank`, with its alpha/rank scale folded into its up weights; a
slot's request weight lives in 0-dim scaling tensors (0 for an idle slot, whose
contribution is then exactly zero). This is what diffusers' `enable_lora_hotswap` /
`load_lora_weights(hotswap=True)` do, done here because those delete the slot when a
swap fails, cannot swap text encoders, and let `set_adapters` replace the scaling
tensors with floats. Text encoders (not compiled) get ordinary adapters, cached as in
AdapterCache.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from pipelines.lora_fit import model_layers
from pipelines.loras import LoraLoadError, _summary, adapter_name, effective_stack, read_lora
from pipelines.spec import LoraSpec

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


class HotswapAdapters:
    """Same interface as AdapterCache: `apply(pipe, loras)` activates exactly that stack."""

    def __init__(self, slots: int = 5, max_rank: int = 64, text_capacity: int = 8) -> None:
        if slots < 1 or max_rank < 1:
            raise ValueError("hot-swap needs at least one slot and a rank of at least 1")
        self.slots = [f"slot_{i}" for i in range(slots)]
        self.max_rank = max_rank
        self._held: OrderedDict[str, str] = OrderedDict()  # slot -> LoRA key, LRU first
        self._weights: dict[str, float] = dict.fromkeys(self.slots, 0.0)
        self._text = _TextAdapters(text_capacity)
        self._layers: dict[str, Any] | None = None

    @property
    def loaded_keys(self) -> list[str]:
        return list(self._held.values())

    @property
    def keys_by_slot(self) -> list[str | None]:
        """The LoRA in each slot. Slot order is the order their outputs are summed in."""
        return [self._held.get(slot) for slot in self.slots]

    def prepare(self, pipe: Any) -> None:
        """Create the slots; call before compiling the UNet. Later calls do nothing."""
        if self._layers is not None:
            return
        from peft import LoraConfig

        unet = pipe.unet
        targets = sorted(model_layers(pipe)["unet"])
        for slot in self.slots:
            config = LoraConfig(r=self.max_rank, lora_alpha=self.max_rank, target_modules=targets)
            unet.add_adapter(config, adapter_name=slot)
        self._layers = {name: unet.get_submodule(name) for name in targets}
        with torch.no_grad():
            for layer in self._layers.values():
                layer.set_adapter(self.slots)
                for slot in self.slots:
                    layer.lora_A[slot].weight.zero_()
                    layer.lora_B[slot].weight.zero_()
                    layer.scaling[slot] = torch.zeros((), device=layer.lora_A[slot].weight.device)

    def apply(self, pipe: Any, loras: tuple[LoraSpec, ...]) -> None:
        self.prepare(pipe)
        stack = effective_stack(loras)
        if len(stack) > len(self.slots):
            # Not the LoRAs' fault (LoraLoadError would mark one unusable): a setting's.
            raise ValueError(f"{len(stack)} LoRAs at once, but only {len(self.slots)} slots")
        wanted = {lora.key: weight for lora, weight in stack}
        slot_of = {key: slot for slot, key in self._held.items()}
        for lora, _ in stack:
            if lora.key in slot_of:
                self._held.move_to_end(slot_of[lora.key])
                continue
            slot = self._free_slot(set(wanted))
            self._swap_in(pipe, slot, lora)
            slot_of[lora.key] = slot
        for slot in self.slots:
            self._set_weight(slot, wanted.get(self._held.get(slot, ""), 0.0))
        self._text.apply(pipe, stack)

    def clear(self, pipe: Any) -> None:
        """Empty every slot (the slots stay) and unload the text-encoder adapters."""
        for slot in list(self._held):
            self._empty(slot)
        for slot in self.slots:
            self._set_weight(slot, 0.0)
        self._text.clear(pipe)

    def _free_slot(self, keep: set[str]) -> str:
        empty = [slot for slot in self.slots if slot not in self._held]
        if empty:
            return empty[0]
        return next(slot for slot, key in self._held.items() if key not in keep)

    def _swap_in(self, pipe: Any, slot: str, lora: LoraSpec) -> None:
        try:
            weights = self._unet_weights(pipe, lora)
        except LoraLoadError:
            raise
        except Exception as exc:
            raise LoraLoadError(lora.key, _summary(exc)) from exc
        # Only now that the LoRA is known to fit does the slot's old LoRA go.
        if slot in self._held:
            self._empty(slot)
        assert self._layers is not None
        with torch.no_grad():
            for module, (down, up, scale) in weights.items():
                layer = self._layers[module]
                rank = down.shape[0]
                layer.lora_A[slot].weight[:rank].copy_(down)
                layer.lora_B[slot].weight[:, :rank].copy_(up * scale)
        self._held[slot] = lora.key

    def _unet_weights(self, pipe: Any, lora: LoraSpec) -> dict[str, tuple[Any, Any, float]]:
        """module -> (down, up, alpha/rank) of the LoRA's UNet layers, as PEFT would set
        them up; raises LoraLoadError for anything a slot cannot hold."""
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
            slot_a = layer.lora_A[self.slots[0]].weight if layer is not None else None
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
            weights[module] = (down.to(slot_a), up.to(slot_a), scale)
        return weights

    def _empty(self, slot: str) -> None:
        assert self._layers is not None
        with torch.no_grad():
            for layer in self._layers.values():
                layer.lora_A[slot].weight.zero_()
                layer.lora_B[slot].weight.zero_()
        del self._held[slot]

    def _set_weight(self, slot: str, weight: float) -> None:
        if self._weights[slot] == weight:
            return
        assert self._layers is not None
        for layer in self._layers.values():
            layer.scaling[slot].fill_(weight)
        self._weights[slot] = weight


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
