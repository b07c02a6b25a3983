"""LoRA stacks on a loaded diffusers pipeline: load once, keep a few, never leave residue."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pipelines.lora_files import LoraFileError, adapter_metadata, read_header
from pipelines.spec import LoraSpec, effective_stack


class LoraLoadError(Exception):
    """A LoRA file could not be loaded into the pipeline; the pipeline is left without it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"could not load LoRA {key}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple:
        return (LoraLoadError, (self.key, self.reason))  # it crosses the render process's pipe


def adapter_name(key: str) -> str:
    # PEFT stores adapters in ModuleDicts, whose keys may not contain dots.
    return "dr_" + re.sub(r"[^0-9A-Za-z_]", "_", key)


class AdapterCache:
    """Keeps up to `capacity` PEFT adapters loaded (least recently used go first) and
    activates exactly the requested stack. An empty stack disables LoRA entirely, which
    makes the pipeline compute exactly what it computed before any LoRA was loaded."""

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError("LoRA cache capacity must be at least 1")
        self.capacity = capacity
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> LoRA key
        self.hits = 0  # LoRAs of a stack found loaded
        self.misses = 0  # ... and loaded from disk

    @property
    def loaded_keys(self) -> list[str]:
        """Keys of the loaded adapters, least recently used first."""
        return list(self._loaded.values())

    def apply(self, pipe: Any, loras: tuple[LoraSpec, ...]) -> None:
        stack = effective_stack(loras)
        if not stack:
            if self._loaded:
                pipe.disable_lora()
            return
        names = [adapter_name(lora.key) for lora, _ in stack]
        for (lora, _), name in zip(stack, names, strict=True):
            if name in self._loaded:
                self._loaded.move_to_end(name)
                self.hits += 1
                continue
            self.misses += 1
            self._evict(pipe, keep=set(names), room_for=1)
            self._load(pipe, lora, name)
        self._evict(pipe, keep=set(names), room_for=0)
        pipe.set_adapters(names, adapter_weights=[weight for _, weight in stack])
        # set_adapters does not undo an earlier disable_lora.
        pipe.enable_lora()

    def clear(self, pipe: Any) -> None:
        """Unload every adapter this cache loaded."""
        if self._loaded:
            _delete_adapters(pipe, list(self._loaded))
            self._loaded.clear()

    def _evict(self, pipe: Any, keep: set[str], room_for: int) -> None:
        evictable = [name for name in self._loaded if name not in keep]
        excess = len(self._loaded) + room_for - self.capacity
        victims = evictable[: max(excess, 0)]
        if victims:
            _delete_adapters(pipe, victims)
            for name in victims:
                del self._loaded[name]

    def _load(self, pipe: Any, lora: LoraSpec, name: str) -> None:
        path = Path(lora.path)
        # Without this check diffusers would take a missing path for a hub repo id.
        if not path.is_file():
            raise LoraLoadError(lora.key, f"file not found: {path}")
        if path.suffix.lower() != ".safetensors":
            raise LoraLoadError(lora.key, f"not a .safetensors file: {path.name}")
        try:
            load_adapter(pipe, path, name)
        except Exception as exc:
            self._discard(pipe, name)
            raise LoraLoadError(lora.key, _summary(exc)) from exc
        if not _has_adapter(pipe, name):
            self._discard(pipe, name)
            raise LoraLoadError(lora.key, "no weights in it match this model")
        self._loaded[name] = lora.key

    def _discard(self, pipe: Any, name: str) -> None:
        # A failed load may leave a half-injected adapter behind.
        if _has_adapter(pipe, name):
            _delete_adapters(pipe, [name])
        else:
            _deactivate_adapters(pipe)


def read_lora(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A LoRA file's tensors (on the CPU) and diffusers' adapter metadata, if any.

    The file is read whole and parsed from memory: safetensors' load_file and safe_open
    (0.8) keep about 60 bytes per tensor alive on every call, which a server that swaps
    adapters all day would accumulate (about 12 kB per tiny LoRA, 150 kB per SDXL one)."""
    from safetensors.torch import load

    header = read_header(path)  # LoraFileError says plainly what is wrong with the file
    return load(path.read_bytes()), adapter_metadata(header)


def load_adapter(pipe: Any, path: Path, name: str) -> None:
    """What an SDXL pipeline's load_lora_weights(path, adapter_name=name) does, from a
    state dict read by read_lora."""
    state, metadata = read_lora(path)
    state, alphas = type(pipe).lora_state_dict(state, unet_config=pipe.unet.config)
    if not all("lora" in key for key in state):
        raise ValueError("not a LoRA: some of its tensors are not LoRA weights")
    common = {"network_alphas": alphas, "adapter_name": name, "metadata": metadata}
    common |= {"_pipeline": pipe, "low_cpu_mem_usage": _low_cpu_mem_usage()}
    type(pipe).load_lora_into_unet(state, unet=pipe.unet, **common)
    for prefix in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, prefix, None)
        if encoder is not None:
            type(pipe).load_lora_into_text_encoder(
                state, text_encoder=encoder, prefix=prefix, lora_scale=pipe.lora_scale, **common
            )


def _low_cpu_mem_usage() -> bool:
    try:
        from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA
    except ImportError:
        return False
    return bool(_LOW_CPU_MEM_USAGE_DEFAULT_LORA)


def _summary(exc: Exception, max_lines: int = 2) -> str:
    if isinstance(exc, LoraFileError):
        return str(exc)
    # Shape mismatches list every layer; the first lines say what went wrong.
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:max_lines])
    if len(lines) > max_lines:
        text += f" (+{len(lines) - max_lines} more lines)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _has_adapter(pipe: Any, name: str) -> bool:
    return any(name in names for names in pipe.get_list_adapters().values())


def _delete_adapters(pipe: Any, names: list[str]) -> None:
    # Deleting an active adapter makes PEFT activate (and warn about) another one.
    _deactivate_adapters(pipe)
    pipe.delete_adapters(names)


def _deactivate_adapters(pipe: Any) -> None:
    """Leave every LoRA layer with no active adapter: the pipeline then computes its base
    model until the next set_adapters."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                if isinstance(module, BaseTunerLayer):
                    module.set_adapter([])
