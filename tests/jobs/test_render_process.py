"""The renderer in a child process: the same images, steps, stops and errors as in this
process, and a child that dies takes only its job with it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lora_builders as build
from conftest import Preloaded
from pipelines.loras import LoraLoadError
from pipelines.sdxl import SDXLRenderer
from pipelines.spec import GenerationSpec, LoraSpec, RenderInterrupted
from server.jobs.render_process import ProcessRenderer, RenderProcessDied

SPEC = GenerationSpec("a lighthouse at dusk", "", 64, 64, 6, 5.0, "euler", (7,))


@pytest.fixture(scope="module")
def child(models_dir: Path) -> Iterator[ProcessRenderer]:
    renderer = ProcessRenderer(partial(SDXLRenderer, "tiny", models_dir), "tiny", latents_every=2)
    renderer.load()
    yield renderer
    renderer.close()


def pixels(images: list) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB")) for image in images]


def test_renders_what_this_process_renders_and_relays_every_step(
    child: ProcessRenderer, tiny_renderer: Preloaded
) -> None:
    steps: list[tuple[int, int]] = []
    images = child.render(SPEC, on_step=lambda step, total: steps.append((step, total)))
    assert child.pid != os.getpid() and child.device == "cpu"
    assert steps == [(step, 6) for step in range(1, 7)]
    assert np.array_equal(pixels(images)[0], pixels(tiny_renderer.render(SPEC))[0])
    two = GenerationSpec("owls", "", 64, 64, 6, 5.0, "euler", (1,))
    batch = child.render_batch([SPEC, two])
    assert [len(images) for images in batch] == [1, 1]
    assert np.array_equal(pixels(batch[1])[0], pixels(tiny_renderer.render(two))[0])


class Sink:
    """An on_latents with the worker's `wanted()`: it starts wanting at `from_step`."""

    def __init__(self, from_step: int) -> None:
        self.from_step, self.step, self.got = from_step, 0, []

    def wanted(self) -> bool:
        return self.step >= self.from_step

    def __call__(self, step: int, latents: np.ndarray) -> None:
        self.got.append((step, latents.shape))


def test_latents_cross_every_n_steps_only_while_wanted(child: ProcessRenderer) -> None:
    plain: list[tuple[int, tuple]] = []
    child.render(SPEC, on_latents=lambda step, latents: plain.append((step, latents.shape)))
    assert plain == [(2, (1, 4, 8, 8)), (4, (1, 4, 8, 8)), (6, (1, 4, 8, 8))]
    never = Sink(from_step=99)
    child.render(SPEC, on_latents=never)
    assert never.got == []
    # An event stream asks for previews mid-render: latents cross from then on.
    later = Sink(from_step=3)
    long = GenerationSpec("slow", "", 64, 64, 40, 5.0, "euler", (1,))

    def on_step(step: int, total: int) -> None:
        later.step = step

    child.render(long, on_step=on_step, on_latents=later)
    steps = [step for step, _ in later.got]
    assert steps and steps[0] > 3 and steps[-1] == 40
    assert all(step % 2 == 0 for step in steps)


def test_a_stop_flag_interrupts_the_child_between_steps(child: ProcessRenderer) -> None:
    steps: list[int] = []
    with pytest.raises(RenderInterrupted):
        long = GenerationSpec("slow", "", 64, 64, 200, 5.0, "euler", (1,))
        child.render(
            long, on_step=lambda step, _: steps.append(step), should_stop=lambda: bool(steps)
        )
    assert 1 <= len(steps) < 200
    assert len(child.render(SPEC)) == 1  # the child carries on


def test_lora_errors_and_checks_cross_the_pipe(
    child: ProcessRenderer, models_dir: Path, tmp_path: Path
) -> None:
    missing = LoraSpec("gone", str(tmp_path / "gone.safetensors"), 1.0)
    with pytest.raises(LoraLoadError) as caught:
        child.render(GenerationSpec(**{**vars(SPEC), "loras": (missing,)}))
    assert caught.value.key == "gone" and "file not found" in caught.value.reason
    check = child.lora_compatibility  # answered in this process, from the child's model
    assert check(models_dir / "loras" / "tiny-lora-0.safetensors") is None
    assert "not a safetensors file" in check(build.garbage(tmp_path / "bad.safetensors"))
    lora = LoraSpec("l0", str(models_dir / "loras" / "tiny-lora-0.safetensors"), 1.0)
    child.render(GenerationSpec(**{**vars(SPEC), "loras": (lora,)}))
    assert child.adapters.misses >= 1


def test_a_child_that_dies_fails_its_request_and_the_next_starts_another(
    child: ProcessRenderer,
) -> None:
    first = child.pid
    assert first is not None
    started = threading.Event()

    def kill_when_started(step: int, total: int) -> None:
        if not started.is_set():
            started.set()
            os.kill(first, signal.SIGKILL)

    long = GenerationSpec("doomed", "", 64, 64, 200, 5.0, "euler", (1,))
    with pytest.raises(RenderProcessDied, match="exited"):
        child.render(long, on_step=kill_when_started)
    assert len(child.render(SPEC)) == 1
    assert child.pid not in (None, first)
