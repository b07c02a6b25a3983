"""Models from disk: a diffusers folder, a single-file checkpoint loaded with no network
(configs inferred from its header), the tiny and random-SDXL models; a model's configs and
LoRA fit without loading its weights; the checks a loaded model must pass."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from pipelines.lora_fit import LoraFit, numel
from pipelines.model_folders import checkpoint_dirs
from pipelines.sdxl_configs import RANDOM_SDXL
from pipelines.spec import ModelLoadError
from pipelines.tiny import ensure_tiny_model

TINY = "tiny"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# A model's size before it is loaded, when its files cannot say: SDXL's parameters.
SDXL_PARAMETERS = 3_500_000_000
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MISSING_WEIGHTS = "weights missing from the file: not all of SDXL's tensors are in it"


def load_pipeline(
    source: str, models_dir: Path, device: str, dtype_name: str, offload: bool
) -> Any:
    """The diffusers pipeline `source` names: `tiny`, `random-sdxl`, a local folder or
    single file (offline), or a hub id."""
    from diffusers import StableDiffusionXLPipeline

    dtype = dtype_kwargs(getattr(torch, dtype_name))
    if source == TINY:
        folder = ensure_tiny_model(models_dir)
        return StableDiffusionXLPipeline.from_pretrained(folder, **dtype)
    if source == RANDOM_SDXL:
        from pipelines.sdxl_configs import build_random_sdxl

        # Made where it will run: 2.6e9 parameters are not worth a trip through the CPU.
        place = "cpu" if offload else device
        return build_random_sdxl(getattr(torch, dtype_name), place)
    local = local_path(source, models_dir)
    if local is None and (source.lower().endswith(SINGLE_FILE_SUFFIXES) or "/" in source[:1]):
        raise ModelLoadError(source, "no such file or folder")
    if local is not None and local.is_dir():
        return StableDiffusionXLPipeline.from_pretrained(local, local_files_only=True, **dtype)
    if local is not None:
        return from_single_file(local, dtype)
    if device.startswith("cuda") and dtype_name != "float32":
        try:
            return StableDiffusionXLPipeline.from_pretrained(source, variant="fp16", **dtype)
        except (OSError, ValueError):
            pass  # the repo has no fp16 variant: load its default weights
    return StableDiffusionXLPipeline.from_pretrained(source, **dtype)

def configs_of(source: str, models_dir: Path) -> dict[str, dict[str, Any]] | None:
    """The unet/text_encoder/text_encoder_2 configs of a local model, None for others."""
    if source == RANDOM_SDXL:
        from pipelines.sdxl_configs import SDXL_BASE_CONFIGS

        return SDXL_BASE_CONFIGS
    folder = ensure_tiny_model(models_dir) if source == TINY else None
    local = folder or local_path(source, models_dir)
    if local is None:
        return None
    return local_configs(local, source)

def local_path(source: str, models_dir: Path) -> Path | None:
    """The local folder or checkpoint file `source` names, as given or under a checkpoint
    folder (checkpoints/ or AUTOMATIC1111's Stable-diffusion/)."""
    given = Path(source).expanduser()
    for candidate in (given, *(folder / source for folder in checkpoint_dirs(models_dir))):
        if candidate.is_dir():
            return candidate
        if candidate.is_file():
            if candidate.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ValueError(f"model file {candidate} is not a .safetensors or .ckpt file")
            return candidate
    return None


def estimate_bytes(source: str, models_dir: Path, dtype_name: str) -> int:
    """A model's size on the device before it is loaded: its parameters (read from the
    safetensors headers) at the renderer's dtype."""
    from pipelines.lora_files import LoraFileError, read_header

    per = _DTYPE_BYTES.get(dtype_name, 4)
    local = None if source in (TINY, RANDOM_SDXL) else local_path(source, models_dir)
    if local is None:
        return (0 if source == TINY else SDXL_PARAMETERS) * per
    files = [local] if local.is_file() else sorted(local.glob("*/*.safetensors"))
    count = 0
    for file in files:
        try:
            count += sum(numel(shape) for shape in read_header(file).shapes.values())
        except (LoraFileError, OSError):
            continue
    return count * per


def from_single_file(path: Path, dtype: dict[str, torch.dtype]) -> Any:
    """A single-file SDXL checkpoint, loaded with no network: its component configs are
    inferred from its header (SDXL base 1.0's where shapes do not tell) and laid out with
    CLIP's tokenizers in a temporary folder that diffusers reads as the hub repo."""
    from diffusers import StableDiffusionXLPipeline

    from pipelines.checkpoint_configs import (
        CheckpointError,
        sdxl_configs_from_header,
        write_config_folder,
    )
    from pipelines.checkpoint_files import classify_checkpoint
    from pipelines.lora_files import LoraFileError, read_header

    name = str(path)
    # Only the header is read (a pickle checkpoint not even that) until it is known to be SDXL.
    info = classify_checkpoint(path)
    if not info.compatible:
        raise ModelLoadError(name, info.reason or "not an SDXL checkpoint")
    try:
        header = read_header(path)
    except (LoraFileError, OSError) as exc:
        raise ModelLoadError(name, str(exc)) from None
    try:
        configs = sdxl_configs_from_header(header)
    except CheckpointError as exc:
        raise ModelLoadError(name, str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="darkroom-sdxl-config-") as folder:
        write_config_folder(configs, Path(folder))
        try:
            return StableDiffusionXLPipeline.from_single_file(
                name, config=folder, local_files_only=True, **dtype
            )
        except NotImplementedError as exc:
            if "meta tensor" not in str(exc):
                raise
            # diffusers left a weight the file lacks on the meta device, then moved it.
            raise ModelLoadError(name, MISSING_WEIGHTS) from None


def check_weights(key: str, pipe: Any) -> None:
    """diffusers leaves a weight the file lacks on the meta device, silently."""
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is None:
            raise ModelLoadError(key, f"it has no {component}")
        for name, param in model.named_parameters():
            if param.device.type == "meta":
                raise ModelLoadError(key, f"{MISSING_WEIGHTS} ({component}.{name})")


def own_weights(pipe: Any) -> None:
    """Give every weight a fresh allocation of its own. A folder's weights are views of the
    memory-mapped files, a single file's are converted copies: the same numbers at other
    addresses, and CPU kernels pick code paths by alignment, so the two would differ in
    the last bits. Fresh copies make a model's pixels independent of how it was loaded."""
    with torch.no_grad():
        for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
            model = getattr(pipe, component, None)
            for tensor in (*model.parameters(), *model.buffers()) if model is not None else ():
                tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


def pipeline_bytes(pipe: Any) -> int:
    total = 0
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is not None:
            total += sum(p.numel() * p.element_size() for p in model.parameters())
    return total


def local_configs(local: Path, name: str) -> dict[str, dict[str, Any]]:
    """The component configs of a local checkpoint: a single file's inferred from its
    header, a diffusers folder's read from its config.json files (ModelLoadError if not)."""
    import json

    from pipelines.checkpoint_configs import CheckpointError, sdxl_configs_from_header
    from pipelines.lora_files import LoraFileError, read_header

    if local.is_file():
        try:
            return sdxl_configs_from_header(read_header(local))
        except (LoraFileError, CheckpointError, OSError) as exc:
            raise ModelLoadError(name, str(exc)) from None
    try:
        return {
            part: json.loads((local / part / "config.json").read_text(encoding="utf-8"))
            for part in ("unet", "vae", "text_encoder", "text_encoder_2")
        }
    except (OSError, ValueError) as exc:
        raise ModelLoadError(name, f"unreadable config: {exc}") from None


def checkpoint_lora_fit(local: Path) -> LoraFit:
    """LoRA fit against a local checkpoint that need not be loaded (see meta_fit)."""
    return meta_fit(local_configs(local, str(local)))


def meta_fit(configs: dict[str, dict[str, Any]]) -> LoraFit:
    """A LoraFit from configs alone: the networks built on the meta device, no weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from pipelines.sdxl_configs import SCHEDULER, empty_models

    pipe = StableDiffusionXLPipeline(
        **empty_models(configs), tokenizer=None, tokenizer_2=None,
        scheduler=EulerDiscreteScheduler.from_config(SCHEDULER), add_watermarker=False,
    )  # fmt: skip
    return LoraFit(pipe)


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    from diffusers.utils import deprecation_utils

    # Recent diffusers renamed torch_dtype to dtype (0.42 warns on the old name);
    # older releases only know torch_dtype.
    if hasattr(deprecation_utils, "_resolve_dtype"):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}
