"""pipelines.checkpoint_files and pipelines.clip_vocab: what a checkpoint is, from its header
or configs alone, and the configs and tokenizers that let a single file load offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import pipelines.checkpoint_files as checkpoint_files
from checkpoint_builders import ldm_shapes, write_header_only
from pipelines.checkpoint_configs import sdxl_configs_from_header, write_config_folder
from pipelines.checkpoint_files import PICKLE_REASON, classify_checkpoint
from pipelines.clip_vocab import VOCAB_SIZE, clip_vocab, write_clip_tokenizer
from pipelines.lora_files import read_header
from pipelines.sdxl_configs import SDXL_BASE_CONFIGS
from pipelines.tiny import tiny_model_dir

UNET = "model.diffusion_model."


@pytest.fixture(scope="module")
def sdxl_shapes() -> dict[str, tuple[int, ...]]:
    """SDXL base 1.0's single-file tensor names and shapes (2.6e9 UNet parameters, as
    AUTOMATIC1111 and ComfyUI save it), made from its real configs on the meta device."""
    return ldm_shapes(SDXL_BASE_CONFIGS)


def classify(tmp_path: Path, shapes: dict[str, tuple[int, ...]], name: str = "m.safetensors"):
    return classify_checkpoint(write_header_only(tmp_path / name, shapes))


def test_sdxl_base_is_compatible_and_its_configs_are_sdxl_base_1_0s(
    tmp_path: Path, sdxl_shapes: dict
) -> None:
    path = write_header_only(tmp_path / "sdxl.safetensors", sdxl_shapes)
    assert path.stat().st_blocks * 512 < 10 * 2**20  # sparse: 5 GB of zeros never written
    info = classify_checkpoint(path)
    assert (info.format, info.base_model, info.compatible, info.reason) == (
        "single-file", "SDXL", True, None,
    )  # fmt: skip
    configs = sdxl_configs_from_header(read_header(path))
    for component, expected in SDXL_BASE_CONFIGS.items():
        assert configs[component] == expected, component


def test_fine_tunes_with_metadata_and_position_ids_are_still_sdxl(
    tmp_path: Path, sdxl_shapes: dict
) -> None:
    # Pony/Illustrious-style files: SDXL's tensors, extra buffers, training metadata.
    shapes = {
        **sdxl_shapes,
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 77),
        "conditioner.embedders.1.model.logit_scale": (),
    }
    path = write_header_only(
        tmp_path / "pony.safetensors", shapes, {"modelspec.title": "Pony Diffusion V6 XL"}
    )
    assert classify_checkpoint(path).compatible


@pytest.mark.parametrize(
    ("variant", "base_model", "reason"),
    [
        ("refiner", "SDXL refiner", "refiner"),
        ("eight-channels", "unknown", "8 input channels"),
        ("inpainting-no-vae", "SDXL inpainting", "first_stage_model"),
        ("sd15", "SD1", "Stable Diffusion 1.x"),
        ("sd2", "SD2", "Stable Diffusion 2.x"),
        ("flux", "Flux", "Flux"),
        ("sd3", "SD3", "Stable Diffusion 3"),
        ("unet-only", "unknown", "two text encoders"),
        ("vae-only", "unknown", "VAE"),
        ("no-vae", "SDXL", "first_stage_model"),
    ],
)
def test_other_models_are_incompatible_with_a_reason(
    tmp_path: Path, sdxl_shapes: dict, variant: str, base_model: str, reason: str
) -> None:
    shapes = dict(sdxl_shapes)
    if variant == "refiner":  # the bigG encoder alone, as embedders.0, 5 time ids
        shapes = {k: v for k, v in shapes.items() if not k.startswith("conditioner.")}
        shapes["conditioner.embedders.0.model.positional_embedding"] = (77, 1280)
        shapes["conditioner.embedders.0.model.text_projection"] = (1280, 1280)
        shapes[UNET + "label_emb.0.0.weight"] = (1280, 2560)
    elif variant == "eight-channels":
        shapes[UNET + "input_blocks.0.0.weight"] = (320, 8, 3, 3)
    elif variant == "inpainting-no-vae":
        shapes = {k: v for k, v in shapes.items() if not k.startswith("first_stage_model.")}
        shapes[UNET + "input_blocks.0.0.weight"] = (320, 9, 3, 3)
    elif variant in ("sd15", "sd2"):
        width = 768 if variant == "sd15" else 1024
        shapes = {
            UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
            UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, width),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
            if variant == "sd15"
            else "cond_stage_model.model.positional_embedding": (77, width),
        }
    elif variant == "flux":
        shapes = {"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}
    elif variant == "sd3":
        shapes = {UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,)}
    elif variant == "unet-only":
        shapes = {k: v for k, v in shapes.items() if k.startswith(UNET)}
    elif variant == "vae-only":
        shapes = {
            k.removeprefix("first_stage_model."): v
            for k, v in shapes.items()
            if k.startswith("first_stage_model.")
        }
    elif variant == "no-vae":
        shapes = {k: v for k, v in shapes.items() if not k.startswith("first_stage_model.")}
    info = classify(tmp_path, shapes)
    assert not info.compatible
    assert info.base_model == base_model
    assert reason in (info.reason or ""), info.reason


def test_sdxl_inpainting_is_compatible_for_inpainting_only(
    tmp_path: Path, sdxl_shapes: dict
) -> None:
    """sd_xl_base_1.0_inpainting_0.1's layout: SDXL base but for conv_in's 9 input channels."""
    shapes = {**sdxl_shapes, UNET + "input_blocks.0.0.weight": (320, 9, 3, 3)}
    info = classify(tmp_path, shapes)
    assert (info.base_model, info.compatible, info.reason) == ("SDXL inpainting", True, None)
    assert info.inpainting
    configs = sdxl_configs_from_header(read_header(tmp_path / "m.safetensors"))
    assert configs["unet"]["in_channels"] == 9
    assert {k: v for k, v in configs["unet"].items() if k != "in_channels"} == {
        k: v for k, v in SDXL_BASE_CONFIGS["unet"].items() if k != "in_channels"
    }
    assert not classify(tmp_path, sdxl_shapes).inpainting


def test_pickle_checkpoints_are_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: Path) -> None:
        raise AssertionError(f"{path} was opened")

    monkeypatch.setattr(checkpoint_files, "read_header", refuse)
    for suffix in (".ckpt", ".pt", ".pth"):
        path = tmp_path / f"model{suffix}"
        path.write_bytes(b"\x80\x04\x95 not really a pickle")
        info = classify_checkpoint(path)
        assert (info.compatible, info.reason) == (False, PICKLE_REASON)
        assert "arbitrary code" in PICKLE_REASON


def test_broken_and_foreign_files(tmp_path: Path, models_dir: Path, sdxl_shapes: dict) -> None:
    whole = write_header_only(tmp_path / "whole.safetensors", sdxl_shapes)
    cut = tmp_path / "cut.safetensors"
    with whole.open("rb") as source:
        cut.write_bytes(source.read(8 + 1000))
    assert not classify_checkpoint(cut).compatible
    os.truncate(whole, whole.stat().st_size // 2)
    info = classify_checkpoint(whole)
    assert not info.compatible and "truncated" in (info.reason or "")
    lora = classify_checkpoint(models_dir / "loras" / "tiny-lora-0.safetensors")
    assert (lora.compatible, lora.reason) == (False, "a LoRA, not a checkpoint")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert not classify_checkpoint(text).compatible


def test_broken_unet_layout_is_incompatible(tmp_path: Path, sdxl_shapes: dict) -> None:
    shapes = {k: v for k, v in sdxl_shapes.items() if ".input_blocks.4." not in k}
    info = classify(tmp_path, shapes)
    assert not info.compatible and "not regular" in (info.reason or ""), info


def _folder(root: Path, name: str, index: dict, unet: dict | None) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(index))
    if unet is not None:
        (folder / "unet").mkdir()
        (folder / "unet" / "config.json").write_text(json.dumps(unet))
    return folder


def test_diffusers_folders(tmp_path: Path, models_dir: Path) -> None:
    tiny = classify_checkpoint(tiny_model_dir(models_dir))
    assert (tiny.format, tiny.base_model, tiny.compatible) == ("diffusers", "SDXL", True)
    sdxl_index = {
        "_class_name": "StableDiffusionXLPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
    }
    unet = dict(SDXL_BASE_CONFIGS["unet"])
    assert classify_checkpoint(_folder(tmp_path, "xl", sdxl_index, unet)).compatible
    cases = {
        "sd15": ({"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 768}, "SD1"),
        "sd2": ({"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 1024}, "SD2"),
        "refiner": (
            {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]},
            unet,
            "SDXL refiner",
        ),
        "eight": (sdxl_index, {**unet, "in_channels": 8}, "unknown"),
        "flux": ({"_class_name": "FluxPipeline"}, None, "Flux"),
        "sd3": ({"_class_name": "StableDiffusion3Pipeline"}, None, "SD3"),
    }
    for name, (index, config, base_model) in cases.items():
        info = classify_checkpoint(_folder(tmp_path, name, index, config))
        assert (info.compatible, info.base_model) == (False, base_model), name
        assert info.reason
    inpaint_index = {**sdxl_index, "_class_name": "StableDiffusionXLInpaintPipeline"}
    nine = {**unet, "in_channels": 9}
    inpaint = classify_checkpoint(_folder(tmp_path, "inp", inpaint_index, nine))
    assert (inpaint.base_model, inpaint.compatible, inpaint.inpainting) == (
        "SDXL inpainting", True, True,
    )  # fmt: skip
    # An inpainting pipeline's folder holding a 4-channel UNet is an ordinary SDXL model.
    four = classify_checkpoint(_folder(tmp_path, "inp4", inpaint_index, unet))
    assert (four.base_model, four.compatible, four.inpainting) == ("SDXL", True, False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "model_index.json" in (classify_checkpoint(empty).reason or "")


def test_clip_vocabulary_is_clips() -> None:
    vocab, merges = clip_vocab()
    assert len(vocab) == VOCAB_SIZE and len(merges) == 48894
    assert (vocab["!"], vocab["a</w>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (
        0, 320, 49406, 49407,
    )  # fmt: skip


def test_tokenizers_tokenise_as_clip_does(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    configs = {"text_encoder": {"max_position_embeddings": 77}}
    write_config_folder(configs, tmp_path / "config")
    first = CLIPTokenizer.from_pretrained(tmp_path / "config" / "tokenizer")
    second = CLIPTokenizer.from_pretrained(tmp_path / "config" / "tokenizer_2")
    # Ids as OpenAI's own SimpleTokenizer gives them (checked against it once, by hand).
    expected = {
        "a lighthouse at dusk, oil painting": [320, 13717, 536, 19708, 267, 2870, 3086],
        "don't stop-believing!!": [847, 713, 1691, 268, 19551, 748],
    }
    for prompt, ids in expected.items():
        assert first(prompt).input_ids == [49406, *ids, 49407]
    # tokenizer_2 pads with "!", a special token for it: the hub's SDXL tokenizer_2 splits a
    # prompt's "!" off as id 0 too, so Darkroom's does what the hub's does.
    assert (
        second("a lighthouse at dusk, oil painting").input_ids
        == first("a lighthouse at dusk, oil painting").input_ids
    )
    assert second("wow!!").input_ids[-3:] == [0, 0, 49407]
    assert (first.pad_token, second.pad_token, second.pad_token_id) == ("<|endoftext|>", "!", 0)
    assert first.model_max_length == 77 and len(first) == VOCAB_SIZE
    other = write_clip_tokenizer(tmp_path / "plain")
    assert json.loads((other / "tokenizer_config.json").read_text())["pad_token"] == "<|endoftext|>"
