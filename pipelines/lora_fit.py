"""Does a LoRA file fit the loaded pipeline? Decided from its header, never its weights.

diffusers' own conversion (kohya, AUTOMATIC1111, old diffusers and PEFT layouts) runs on
meta tensors built from the safetensors header, and every converted layer is compared
with the model's layer of that name. A snapshot of the model's layers taken at load
time is all this reads, so a check may run on any thread while the worker renders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.lora_files import LoraFileError, LoraHeader, base_model, read_header
from pipelines.lora_files import unsupported_reason as file_problem

# Bump when the rules below change, so verdicts cached under the old rules are not used.
CHECK_VERSION = 2
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
COMPONENTS = ("unet", *TEXT_ENCODERS)
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


@dataclass(frozen=True)
class Layer:
    in_features: int
    out_features: int
    kernel: tuple[int, ...]  # () for a Linear layer


def model_layers(pipe: Any) -> dict[str, dict[str, Layer]]:
    """Every Linear and Conv2d layer a LoRA could target, by component, as loaded (a layer
    PEFT already wraps is listed under its own name, its adapters not at all)."""
    found: dict[str, dict[str, Layer]] = {}
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        layers = found.setdefault(component, {})
        for name, module in model.named_modules():
            if any(part.startswith("lora_") for part in name.split(".")):
                continue
            name = name.removesuffix(".base_layer")
            if isinstance(module, torch.nn.Linear):
                layers[name] = Layer(module.in_features, module.out_features, ())
            elif isinstance(module, torch.nn.Conv2d):
                kernel = tuple(module.kernel_size)
                layers[name] = Layer(module.in_channels, module.out_channels, kernel)
    return found



def import_dependencies() -> None:
    """Import what a check runs on (diffusers' pipelines and converters take seconds), so
    that a process receiving a LoraFit can do it before the first check, not during it."""
    from diffusers import StableDiffusionXLPipeline  # noqa: F401
    from diffusers.utils import state_dict_utils  # noqa: F401


class LoraFit:
    """`fit(path)` is None when diffusers can load every layer of the file into this
    model, else a short reason. `model_key` names what the verdicts depend on: the
    model's layer shapes and these rules, not its weights or name."""

    def __init__(self, pipe: Any) -> None:
        self._loader = type(pipe)
        self._unet_config = pipe.unet.config
        self._layers = model_layers(pipe)
        self._flat_text = {
            name: not hasattr(getattr(pipe, name), "text_model")
            for name in TEXT_ENCODERS
            if getattr(pipe, name, None) is not None
        }
        shapes = {
            component: sorted((name, layer.in_features, layer.out_features, list(layer.kernel))
                              for name, layer in layers.items())
            for component, layers in self._layers.items()
        }  # fmt: skip
        fingerprint = json.dumps([CHECK_VERSION, self._loader.__name__, shapes])
        self.model_key = "layers-" + hashlib.sha256(fingerprint.encode()).hexdigest()[:24]

    def __call__(self, path: Path) -> str | None:
        try:
            header = read_header(Path(path))
        except LoraFileError as exc:
            return str(exc)
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        problem = file_problem(header)
        if problem:
            return problem
        family = base_model(header)
        hint = f"made for {family}: " if family and family != "SDXL" else ""
        try:
            state, _ = self._loader.lora_state_dict(
                _meta_state_dict(Path(path), header), unet_config=self._unet_config
            )
            parts = self._split(state)
        except Exception as exc:
            return f"{hint}diffusers cannot convert its layer names ({short_reason(exc)})"
        return self._judge(parts, hint)

    def _split(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """The converted state dict per component, in PEFT's names, as the loaders do it."""
        from diffusers.utils.state_dict_utils import (
            convert_state_dict_to_diffusers,
            convert_state_dict_to_peft,
            convert_unet_state_dict_to_peft,
        )

        parts: dict[str, dict[str, torch.Tensor]] = {}
        claimed: set[str] = set()
        for component in COMPONENTS:
            prefix = component + "."
            part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            claimed.update(prefix + key for key in part)
            if not part:
                continue
            if component == "unet":
                if "lora_A" not in next(iter(part)):
                    part = convert_unet_state_dict_to_peft(part)
            else:
                part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
                if self._flat_text.get(component):
                    part = {k.removeprefix("text_model."): v for k, v in part.items()}
            parts[component] = part
        stray = [key for key in state if key not in claimed]
        if stray:
            # diffusers silently drops keys outside the three components.
            parts.setdefault("(none)", {}).update({key: state[key] for key in stray})
        return parts

    def _judge(self, parts: dict[str, dict[str, torch.Tensor]], hint: str) -> str | None:
        misfits: list[str] = []
        total = 0
        for component, part in parts.items():
            layers = self._layers.get(component, {})
            modules: dict[str, dict[str, tuple[int, ...]]] = {}
            for key, tensor in part.items():
                for role in ("lora_A", "lora_B"):
                    if f".{role}." in key:
                        module = key.split(f".{role}.")[0]
                        modules.setdefault(module, {})[role] = tuple(tensor.shape)
                        break
                else:
                    if "lora_magnitude_vector" not in key and not key.endswith(".bias"):
                        modules.setdefault(key, {"unconverted": ()})
            for module, pair in modules.items():
                total += 1
                layer = layers.get(module)
                if "unconverted" in pair:
                    why = "diffusers cannot convert this name"
                else:
                    why = _misfit(layer, pair) if layer else "no such layer in this model"
                if why:
                    misfits.append(f"{component}.{module}: {why}")
        if total == 0:
            return "no LoRA layers in it"
        if misfits:
            return (
                f"{hint}{len(misfits)} of its {total} layers do not fit this model,"
                f" e.g. {misfits[0]}"
            )
        return None


def _misfit(layer: Layer, pair: dict[str, tuple[int, ...]]) -> str | None:
    if set(pair) != {"lora_A", "lora_B"}:
        return "not a pair of LoRA down/up weights"
    down, up = pair["lora_A"], pair["lora_B"]
    if len(down) != 2 + len(layer.kernel) or len(up) != len(down):
        kind = "Conv2d" if layer.kernel else "Linear"
        return f"{len(down)}-D LoRA weights for a {kind} layer"
    expected_down = (down[0], layer.in_features, *layer.kernel)
    expected_up = (layer.out_features, down[0], *((1,) * len(layer.kernel)))
    if down != expected_down or up != expected_up:
        wanted = f"{layer.in_features}->{layer.out_features}"
        got = f"{down[1] if len(down) > 1 else '?'}->{up[0]}"
        return f"LoRA maps {got} features, the layer {wanted}"
    return None


def _meta_state_dict(path: Path, header: LoraHeader) -> dict[str, torch.Tensor]:
    """The file's tensors as shapes only, except the one-number ones (kohya's alphas),
    which the conversion reads; those are a few bytes each."""
    state: dict[str, torch.Tensor] = {}
    with path.open("rb") as file:
        for name, shape in header.shapes.items():
            dtype = _DTYPES.get(header.dtypes[name], torch.float32)
            if numel(shape) == 1 and header.dtypes[name] in _DTYPES:
                start, stop = header.spans[name]
                file.seek(start)
                raw = bytearray(file.read(stop - start))
                state[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape).clone()
            else:
                state[name] = torch.empty(shape, dtype=dtype, device="meta")
    return state


def numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """An exception as one line for a client: its type and message, at most `limit` long."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
