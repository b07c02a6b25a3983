"""What a LoRA file says about itself, from its safetensors header alone (no torch).

A safetensors file starts with an 8-byte little-endian header length and a JSON header
that names every tensor with its dtype, shape and byte range, plus string metadata
(kohya's `ss_*` training keys, `modelspec.*`). Reading only that is fast for any file
size and safe for any content.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024
TOP_TAGS = 8

# Context width of the UNet's cross-attention, which its to_k/to_v layers take as input.
_CONTEXT_DIMS = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_EMBEDDING_KEYS = ("clip_l", "clip_g", "emb_params")


class LoraFileError(Exception):
    """The file is not a readable safetensors file; the message says why, for people."""


@dataclass(frozen=True)
class LoraHeader:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]
    # Where each tensor's bytes are in the file.
    spans: dict[str, tuple[int, int]]

    @property
    def names(self) -> list[str]:
        return list(self.shapes)


def read_header(path: Path) -> LoraHeader:
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise LoraFileError(f"not a safetensors file: only {size} bytes")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise LoraFileError("not a safetensors file: no valid header")
        raw = file.read(length)
    try:
        header = json.loads(raw, parse_constant=refuse_json_constant)
    except (UnicodeDecodeError, ValueError):
        raise LoraFileError("not a safetensors file: its header is not JSON") from None
    except RecursionError:
        raise LoraFileError("damaged safetensors header: JSON nested too deep") from None
    if not isinstance(header, dict):
        raise LoraFileError("not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name, entry in header.items():
        try:
            shapes[name] = tuple(_count(n) for n in entry["shape"])
            dtypes[name] = str(entry["dtype"])
            start, stop = (8 + length + _count(offset) for offset in entry["data_offsets"])
        except (TypeError, KeyError, IndexError, ValueError):
            raise LoraFileError(f"damaged safetensors header: bad entry for {name!r}") from None
        if stop < start:
            raise LoraFileError(f"damaged safetensors header: bad entry for {name!r}")
        spans[name] = (start, stop)
    end = max((stop for _, stop in spans.values()), default=0)
    if end > size:
        raise LoraFileError(f"truncated: {size} bytes, its header describes {end}")
    if not shapes:
        raise LoraFileError("contains no tensors")
    if not isinstance(metadata, dict):
        metadata = {}
    # The format's metadata is text to text; nested values are dropped, not stringified.
    text = {str(k): str(v) for k, v in metadata.items() if isinstance(v, str | int | float)}
    return LoraHeader(shapes, dtypes, text, spans)


def refuse_json_constant(name: str) -> None:
    """json.loads' parse_constant: NaN and Infinity from a file are refused."""
    raise ValueError(f"{name} is not a JSON number")


def _count(value: Any) -> int:
    """A shape dimension or a byte offset: a non-negative JSON integer (1e999 is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def adapter_metadata(header: LoraHeader) -> dict[str, Any] | None:
    """The LoraConfig that diffusers/PEFT wrote beside the weights (rank, alpha, targets)."""
    raw = header.metadata.get("lora_adapter_metadata")
    try:
        value = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def key_format(names: list[str]) -> str:
    """The layout of the tensor names: kohya, peft, diffusers, lycoris-loha/-lokr, ..."""
    if any(".hada_" in name for name in names):
        return "lycoris-loha"
    if any(".lokr_" in name for name in names):
        return "lycoris-lokr"
    if any(name.startswith(_KOHYA_PREFIXES) for name in names):
        return "kohya"
    if any(".lora_A." in name or ".lora_B." in name for name in names):
        return "peft"
    if any("lora" in name for name in names):
        return "diffusers"
    if any(
        name in ("clip_l", "clip_g", "emb_params") or "string_to_param" in name for name in names
    ):
        return "embedding"
    return "unknown"


def unsupported_reason(header: LoraHeader) -> str | None:
    """Why no SDXL model could load this file whatever its weights, or None."""
    layout = key_format(header.names)
    if layout.startswith("lycoris-"):
        kind = "LoHa" if layout.endswith("loha") else "LoKr"
        return f"a LyCORIS {kind} file: diffusers' SDXL loader reads only plain LoRA (and LoCon)"
    if layout == "embedding":
        return "a textual-inversion embedding, not a LoRA"
    if layout == "unknown":
        return f"not a LoRA: none of its {len(header.names)} tensors is named like a LoRA layer"
    return None


def base_model(header: LoraHeader) -> str | None:
    """SD1, SD2, SDXL (or what the training metadata names), from metadata or shapes."""
    meta = header.metadata
    for declared in (meta.get("ss_base_model_version"), meta.get("modelspec.architecture")):
        if declared:
            return _family(declared)
    if meta.get("ss_v2", "").lower() == "true":
        return "SD2"
    for name, shape in header.shapes.items():
        is_down = name.endswith(("lora_down.weight", "lora_A.weight", ".down.weight"))
        if "attn2" in name and "to_k" in name and is_down and len(shape) >= 2:
            return _CONTEXT_DIMS.get(shape[1])
    if any(name.startswith(("lora_te2_", "text_encoder_2.")) for name in header.names):
        return "SDXL"
    return None


def _family(declared: str) -> str:
    text = declared.lower()
    for needle, family in (
        ("sdxl", "SDXL"),
        ("stable-diffusion-xl", "SDXL"),
        ("sd_v1", "SD1"),
        ("stable-diffusion-v1", "SD1"),
        ("sd_v2", "SD2"),
        ("stable-diffusion-v2", "SD2"),
        ("sd_3", "SD3"),
        ("stable-diffusion-3", "SD3"),
        ("flux", "Flux"),
    ):
        if needle in text:
            return family
    return declared.split("/")[0]


def rank(header: LoraHeader) -> int | None:
    declared = finite_number(header.metadata.get("ss_network_dim"))
    if declared:
        return int(declared)
    ranks = Counter(
        shape[0]
        for name, shape in header.shapes.items()
        if name.endswith(("lora_down.weight", "lora_A.weight", ".down.weight")) and shape
    )
    return ranks.most_common(1)[0][0] if ranks else None


def training_info(header: LoraHeader) -> dict[str, Any]:
    """Catalog fields from kohya's ss_* keys and modelspec.*; only what the file states."""
    meta = header.metadata
    info: dict[str, Any] = {
        "name": meta.get("ss_output_name") or meta.get("modelspec.title") or None,
        "description": meta.get("modelspec.description") or None,
        "activation_text": meta.get("modelspec.trigger_phrase") or None,
        "tags": _top_tags(meta.get("ss_tag_frequency")),
        "base_model": base_model(header),
        "rank": rank(header),
        "alpha": finite_number(meta.get("ss_network_alpha")),
        "format": key_format(header.names),
    }
    return {key: value for key, value in info.items() if value not in (None, [])}


def finite_number(value: Any) -> float | None:
    """A finite number from a file's text or JSON, or None (inf and nan would break every
    JSON answer that shows them)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _top_tags(text: str | None) -> list[str]:
    """The most frequent caption tags over all of kohya's training datasets."""
    if not text:
        return []
    try:
        datasets = json.loads(text)
    except (ValueError, RecursionError):
        return []
    counts: Counter[str] = Counter()
    for tags in datasets.values() if isinstance(datasets, dict) else ():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if str(tag).strip() and isinstance(count, int | float) and math.isfinite(count):
                    counts[str(tag).strip()] += count
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [tag for tag, _ in ranked[:TOP_TAGS]]
