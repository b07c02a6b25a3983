"""SDXLRenderer with several models: single files loaded offline, LRU eviction, LoRA fit
per model, load failures, determinism across switches, memory over many switches."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from checkpoint_builders import build_tiny_xl, to_single_file
from pipelines.model_files import estimate_bytes
from pipelines.sdxl import SDXLRenderer
from pipelines.spec import GenerationSpec, LoraSpec, ModelLoadError, ModelSpec, batch_key
from pipelines.tiny import tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]
SPEC = GenerationSpec("a lighthouse at dusk", "", 64, 64, 6, 5.0, "euler", (7, 8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def same(first: list[Image.Image], second: list[Image.Image]) -> bool:
    return len(first) == len(second) and all(
        np.array_equal(pixels(a), pixels(b)) for a, b in zip(first, second, strict=True)
    )


@pytest.fixture(scope="module")
def xl(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSpec]:
    """tiny-xl-blocks as a diffusers folder and as the single file converted from it."""
    root = tmp_path_factory.mktemp("xl")
    folder = build_tiny_xl(root / "tiny-xl-blocks")
    file = to_single_file(folder, root / "tiny-xl-blocks.safetensors")
    return {"folder": ModelSpec("xl-folder", str(folder)), "file": ModelSpec("xl-file", str(file))}


@pytest.fixture(scope="module")
def renderer(models_dir: Path) -> SDXLRenderer:
    return SDXLRenderer("tiny", models_dir, models_loaded=2)


@pytest.fixture(scope="module")
def lora(models_dir: Path) -> LoraSpec:
    return LoraSpec("c" * 64, str(models_dir / "loras" / "tiny-lora-0.safetensors"), 1.0)


def on(model: ModelSpec | None, **changes: object) -> GenerationSpec:
    return replace(SPEC, model=model, **changes)  # type: ignore[arg-type]


def test_single_file_renders_the_pixels_of_its_diffusers_folder(
    renderer: SDXLRenderer, xl: dict[str, ModelSpec]
) -> None:
    for sampler in ("euler", "dpmpp_2m_karras"):
        from_folder = renderer.render(on(xl["folder"], sampler=sampler))
        from_file = renderer.render(on(xl["file"], sampler=sampler))
        assert same(from_folder, from_file), sampler
    assert not same(from_folder, renderer.render(on(None, sampler="dpmpp_2m_karras")))


def test_single_file_loads_with_no_network_and_an_empty_hub_cache(
    tmp_path: Path, renderer: SDXLRenderer, xl: dict[str, ModelSpec], models_dir: Path
) -> None:
    hub = tmp_path / "hf"
    out = tmp_path / "pixels.npy"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from pipelines.sdxl import SDXLRenderer
        from pipelines.spec import GenerationSpec
        renderer = SDXLRenderer({xl["file"].source!r}, {str(models_dir)!r}, cpu_threads=1)
        spec = GenerationSpec("a lighthouse at dusk", "", 64, 64, 6, 5.0, "euler", (7,))
        np.save({str(out)!r}, np.asarray(renderer.render(spec)[0].convert("RGB")))
        """
    )
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(hub),
        "HF_HUB_CACHE": str(hub / "hub"), "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = renderer.render(on(xl["folder"], seeds=(7,)))[0]
    assert np.array_equal(np.load(out), pixels(expected))
    assert not any(path.is_file() for path in hub.rglob("*")), "the hub cache was written"


def test_models_are_held_least_recently_used_first(
    models_dir: Path, xl: dict[str, ModelSpec]
) -> None:
    renderer = SDXLRenderer("tiny", models_dir, models_loaded=2, model_key="tiny-key")
    small = replace(SPEC, steps=2, seeds=(1,))
    renderer.load()
    assert renderer.loaded_models == ["tiny-key"]
    assert renderer.is_loaded(None) and renderer.is_loaded("tiny-key")
    renderer.render(replace(small, model=xl["folder"]))
    assert renderer.loaded_models == ["tiny-key", "xl-folder"]
    renderer.render(small)  # the default: used last now
    renderer.render(replace(small, model=xl["file"]))  # evicts the least recently used
    assert renderer.loaded_models == ["tiny-key", "xl-file"]
    assert not renderer.is_loaded(xl["folder"]) and renderer.is_loaded(xl["file"])
    assert (renderer.loads, renderer.evictions) == (3, 1)
    # The default named by its key is the default's pipeline, not a second copy.
    renderer.render(replace(small, model=ModelSpec("tiny-key", "tiny")))
    assert renderer.loads == 3 and renderer.model_key(None) == "tiny-key"


def test_a_memory_budget_evicts_by_size(
    models_dir: Path, xl: dict[str, ModelSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    renderer = SDXLRenderer("tiny", models_dir, models_loaded=3)
    renderer.load()
    tiny_bytes = renderer._models["tiny"].size_bytes
    assert estimate_bytes(xl["file"].source, models_dir, renderer.dtype) > tiny_bytes
    # As on CUDA with no --models-loaded: no count, a byte budget for one model of each.
    renderer.models_loaded = None
    budget = tiny_bytes + estimate_bytes(xl["file"].source, models_dir, renderer.dtype) + 1000
    monkeypatch.setattr(renderer, "_memory_budget", lambda: budget)
    small = replace(SPEC, steps=2, seeds=(1,))
    renderer.render(replace(small, model=xl["file"]))
    assert renderer.loaded_models == ["tiny", "xl-file"]
    renderer.render(replace(small, model=xl["folder"]))
    assert renderer.loaded_models == ["xl-folder"]


def test_same_spec_same_pixels_whatever_ran_in_between(
    renderer: SDXLRenderer, xl: dict[str, ModelSpec], lora: LoraSpec
) -> None:
    plain, with_lora = on(None), on(None, loras=(lora,))
    first = renderer.render(plain), renderer.render(with_lora)
    assert not same(first[0], first[1])
    for between in (xl["folder"], xl["file"], None, xl["folder"]):
        renderer.render(on(between, seeds=(99,)))
        renderer.render(on(between, cfg_scale=7.0, sampler="euler_a"))
    assert same(renderer.render(with_lora), first[1])
    assert same(renderer.render(plain), first[0])
    xl_first = renderer.render(on(xl["file"]))
    renderer.render(on(None, loras=(lora,)))
    renderer.render(on(xl["folder"]))
    assert same(renderer.render(on(xl["file"])), xl_first)


def test_batches_never_mix_models(renderer: SDXLRenderer, xl: dict[str, ModelSpec]) -> None:
    keys = {batch_key(on(model)) for model in (None, xl["folder"], xl["file"])}
    assert len(keys) == 3
    assert batch_key(on(xl["file"])) == batch_key(on(xl["file"], prompt="other", seeds=(3,)))
    with pytest.raises(ValueError, match="batch_key"):
        renderer.render_batch([on(None), on(xl["file"])])
    alone = renderer.render(on(xl["file"], seeds=(5,)))
    batched = renderer.render_batch([on(xl["file"], seeds=(5,)), on(xl["file"], seeds=(6,))])
    assert same(batched[0], alone)


def test_lora_compatibility_is_per_model_and_loads_nothing(
    models_dir: Path, xl: dict[str, ModelSpec], lora: LoraSpec
) -> None:
    renderer = SDXLRenderer("tiny", models_dir, models_loaded=1)
    assert renderer.lora_compatibility(lora.path) is None  # made for the tiny model
    fit = renderer.lora_compatibility_for(xl["file"])
    assert renderer.loaded_models == ["tiny"]  # judged from the header's shapes alone
    assert "do not fit" in (fit(lora.path) or "")
    assert renderer.lora_compatibility_for(xl["folder"]).model_key == fit.model_key
    renderer.render(replace(SPEC, model=xl["file"], steps=2, seeds=(1,)))
    loaded = renderer.lora_compatibility_for(xl["file"])
    assert loaded is not fit and loaded.model_key == fit.model_key
    assert renderer.lora_compatibility_for(None).model_key != fit.model_key
    # What crosses the render process's pipe.
    assert pickle.loads(pickle.dumps(fit)).model_key == fit.model_key


def _broken(tmp_path: Path, file: Path) -> dict[str, Path]:
    truncated = tmp_path / "truncated.safetensors"
    data = file.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    state = load_file(file)
    renamed = dict(state)
    key = "first_stage_model.decoder.conv_out.weight"
    renamed["first_stage_model.decoder.conv_outs.weight"] = renamed.pop(key)
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    missing = {
        k: v for k, v in state.items() if ".input_blocks.4.1.transformer_blocks.0.attn1" not in k
    }
    save_file(missing, str(tmp_path / "missing.safetensors"))
    shaped = dict(state)
    name = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    shaped[name] = shaped[name][:, :-1].contiguous()
    save_file(shaped, str(tmp_path / "shaped.safetensors"))
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04 never unpickled")
    refiner = {
        k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
        for k, v in state.items()
        if not k.startswith("conditioner.embedders.0.")
    }
    save_file(refiner, str(tmp_path / "refiner.safetensors"))
    names = ("renamed", "missing", "shaped", "refiner")
    return {
        "truncated": truncated, "pickle": pickled,
        **{name: tmp_path / f"{name}.safetensors" for name in names},
        "absent": tmp_path / "absent.safetensors",
    }  # fmt: skip


def test_broken_files_fail_to_load_and_the_renderer_stays_usable(
    tmp_path: Path, renderer: SDXLRenderer, xl: dict[str, ModelSpec]
) -> None:
    before = renderer.render(on(xl["folder"]))
    reasons = {
        "truncated": "truncated",
        "pickle": "arbitrary code",
        "renamed": "decoder.conv_out.weight is missing",
        "missing": "weights missing from the file",
        "shaped": "expected shape",
        "refiner": "refiner",
        "absent": "no such file or folder",
    }
    for name, path in _broken(tmp_path, Path(xl["file"].source)).items():
        spec = on(ModelSpec(f"broken-{name}", str(path)), seeds=(1,))
        with pytest.raises(ModelLoadError) as raised:
            renderer.render(spec)
        error = raised.value
        assert error.model == f"broken-{name}" and reasons[name] in error.reason, (name, error)
        assert "Traceback" not in error.reason and len(error.reason) <= 300
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), copy.model, copy.reason) == (ModelLoadError, error.model, error.reason)
        assert f"broken-{name}" not in renderer.loaded_models
    assert same(renderer.render(on(xl["folder"])), before)
    assert renderer.render(on(xl["file"], seeds=(1,)))


def _rss_mib() -> float:
    resident = int(Path("/proc/self/statm").read_text().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc")
def test_switching_models_many_times_does_not_grow_memory(tmp_path: Path, models_dir: Path) -> None:
    """40 switches between two tiny models with room for one: each switch evicts one and
    loads the other from disk. Resident memory after them stays within a small bound of
    what it was after the first few (a model kept per switch would be 40 models)."""
    other = shutil.copytree(tiny_model_dir(models_dir), tmp_path / "tiny-copy")
    renderer = SDXLRenderer("tiny", models_dir, models_loaded=1)
    models = (None, ModelSpec("copy", str(other)))
    spec = replace(SPEC, steps=1, seeds=(1,), width=64, height=64)
    for index in range(10):
        renderer.render(replace(spec, model=models[index % 2]))
    start = _rss_mib()
    for index in range(40):
        renderer.render(replace(spec, model=models[index % 2]))
    grown = _rss_mib() - start
    size = renderer._models[renderer.loaded_models[0]].size_bytes / 2**20
    print(
        f"RSS {start:.0f} MiB after 10 switches, {grown:+.1f} MiB after 40 more"
        f" ({size:.1f} MiB a model)"
    )
    assert renderer.evictions == 49 and len(renderer.loaded_models) == 1
    assert grown < 48, f"resident memory grew by {grown:.1f} MiB over 40 switches"
