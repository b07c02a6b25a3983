"""Darkroom's render path against plain diffusers, on one device, in one run.

    python scripts/bench_gpu.py                          # no CUDA: tiny model, 256x256, 20 steps
    python scripts/bench_gpu.py --model random-sdxl --compile    # CUDA: SDXL's real shapes

Rows: StableDiffusionXLPipeline as a user would write it (the baseline), SDXLRenderer.render,
renders that switch between two LoRAs, render_batch of 1, 2 and 4 requests (other prompts
and seeds), and with --compile the same for a compiled renderer; --offload adds one render
with model CPU offload. The JSON report is rewritten after every row, so a run cut short
keeps what it measured. Each row: seconds per image (median of --repeat runs after one
warm-up run), UNet it/s (denoising-loop iterations per second, from per-step timestamps,
one iteration covering the whole batch), peak memory (CUDA: max allocated; CPU: sampled
peak RSS of the process) and speed-up over the baseline.
Every row uses the model's own Euler sampler. random-sdxl is SDXL base 1.0's architecture
with random weights (pipelines/sdxl_configs.py): real FLOPs, images of noise, nothing to download.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.sdxl import TINY, SDXLRenderer, detect_device, resolve_dtype  # noqa: E402
from pipelines.sdxl_configs import RANDOM_SDXL, build_random_sdxl  # noqa: E402
from pipelines.spec import GenerationSpec, LoraSpec  # noqa: E402
from pipelines.tiny import ensure_tiny_model, write_lora  # noqa: E402

PROMPTS = (
    "a lighthouse on a cliff at dusk, oil painting",
    "a red bicycle leaning on a wall in the snow",
    "portrait of an old fisherman, dramatic light",
    "a bowl of ramen, studio photograph",
)
CFG = 5.0


@dataclass
class Row:
    name: str
    images_per_call: int
    seconds_per_image: float | None = None
    unet_it_per_s: float | None = None
    peak_memory_mb: float | None = None
    speedup_vs_baseline: float | None = None
    note: str = ""


def main() -> int:
    args = parse_args()
    cuda = args.device.startswith("cuda")
    print(f"device {describe(args.device)} ({args.dtype}), model {args.model}, "
          f"{args.width}x{args.height}, {args.steps} steps, median of {args.repeat}")  # fmt: skip
    started = time.monotonic()
    # One pipeline at a time: each returns before the next loads, so memory is comparable.
    baseline, image = measure_baseline(args)
    rows = [baseline]
    stages = [
        ("darkroom", {}, True, ""),
        ("darkroom compiled", {"compile": True}, args.compile, "--compile"),
        ("darkroom offload", {"offload": True}, args.offload, "--offload"),
    ]
    for label, options, wanted, flag in stages:
        write_report(args, rows)  # after every row: a run cut short still leaves its rows
        free(args.device)
        if not wanted:
            rows.append(Row(label, 1, note=f"skipped: not requested ({flag})"))
        elif args.deadline and time.monotonic() - started > args.deadline:
            rows.append(Row(label, 1, note=f"skipped: past --deadline {args.deadline:.0f} s"))
        else:
            measure_darkroom(args, image, label, rows, **options)
    write_report(args, rows)
    print_table(rows, "max allocated" if cuda else "peak RSS")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def write_report(args: argparse.Namespace, rows: list[Row]) -> None:
    for row in rows:
        if row.seconds_per_image is not None:
            row.speedup_vs_baseline = rows[0].seconds_per_image / row.seconds_per_image
    if args.out is None:
        return
    report = {
        "device": describe(args.device),
        **{key: getattr(args, key) for key in ("dtype", "model", "width", "height", "steps")},
        "repeat": args.repeat,
        "sampler": "euler (the pipeline's default EulerDiscreteScheduler)",
        "memory": "torch.cuda.max_memory_allocated"
        if args.device.startswith("cuda")
        else "peak process RSS, sampled",
        "versions": versions(),
        "rows": [asdict(row) for row in rows],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=detect_device())
    parser.add_argument("--dtype", help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--model", help=f"{TINY}, {RANDOM_SDXL} or a diffusers folder / hub id")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", default="1,2,4", help="render_batch sizes")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile'd renderer")
    parser.add_argument("--offload", action="store_true", help="add a CPU-offloaded renderer")
    parser.add_argument("--lora-rank", type=int, default=32, help="of the LoRA switch row")
    parser.add_argument("--deadline", type=float, help="seconds after which no stage starts")
    parser.add_argument("--out", type=Path, help="write the report as JSON here (after every row)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.dtype = resolve_dtype(args.dtype, args.device)
    args.model = args.model or (RANDOM_SDXL if cuda else TINY)
    args.width = args.width or (1024 if cuda else 256)
    args.height = args.height or (1024 if cuda else 256)
    args.steps = args.steps or (30 if cuda else 20)
    args.batches = [int(size) for size in args.batches.split(",")]
    return args


def spec(args: argparse.Namespace, index: int) -> GenerationSpec:
    prompt = PROMPTS[index % len(PROMPTS)]
    size = (args.width, args.height)
    return GenerationSpec(prompt, "", *size, args.steps, CFG, "euler", (1000 + index,))


# --- the rows


def measure_baseline(args: argparse.Namespace) -> tuple[Row, Any]:
    """The baseline row, and its first prompt's image."""
    from diffusers import StableDiffusionXLPipeline

    dtype = getattr(torch, args.dtype)
    if args.model == RANDOM_SDXL:
        pipe = build_random_sdxl(dtype, args.device)
    else:
        source = ensure_tiny_model(args.models_dir) if args.model == TINY else args.model
        pipe = StableDiffusionXLPipeline.from_pretrained(source, dtype=dtype)
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    first = spec(args, 0)

    def run(clock: StepClock) -> Any:
        return pipe(
            prompt=first.prompt,
            width=args.width,
            height=args.height,
            num_inference_steps=args.steps,
            guidance_scale=CFG,
            generator=torch.Generator().manual_seed(first.seeds[0]),
            callback_on_step_end=lambda _pipe, _i, _t, tensors: clock.tick(tensors),
        ).images[0]

    row = timed_row("plain diffusers (baseline)", 1, run, args)
    return row, run(StepClock(args.device))


def measure_darkroom(
    args: argparse.Namespace, baseline: Any, label: str, rows: list[Row], **options: bool
) -> None:
    """Appends this renderer's rows to `rows`, rewriting the report after each."""
    renderer = SDXLRenderer(args.model, args.models_dir, args.device, args.dtype, **options)

    def add(row: Row) -> None:
        rows.append(row)
        write_report(args, rows)

    try:
        started = time.perf_counter()
        renderer.load()
        loaded = f"loaded in {time.perf_counter() - started:.1f} s"
        first = spec(args, 0)
        row = timed_row(f"{label} render", 1, lambda clock: render(renderer, [first], clock), args)
        image = renderer.render(first)[0]
        difference = np.abs(pixels(image) - pixels(baseline)).max()
        row.note = f"{loaded}; max pixel difference to the baseline: {difference}"
        add(row)
        if options.get("offload"):
            return  # offload is for fitting a small GPU, not for speed: one row
        add(lora_row(renderer, label, args))
        for size in args.batches:
            add(batch_row(renderer, size, label, args))
    except Exception as exc:  # a failed compile is a result, not the end of the run
        add(Row(label, 1, note=f"skipped: {type(exc).__name__}: {exc}"[:300]))


def batch_row(renderer: SDXLRenderer, size: int, label: str, args: argparse.Namespace) -> Row:
    specs = [spec(args, index) for index in range(size)]
    return timed_row(
        f"{label} batch {size}", size, lambda clock: render(renderer, specs, clock), args
    )


def lora_row(renderer: SDXLRenderer, label: str, args: argparse.Namespace) -> Row:
    """Every render switches between two random rank-`--lora-rank` LoRAs on the attention
    layers: the cost of LoRAs themselves (compiled: the hot-swap adapter switched on) plus
    that of changing them."""
    folder = Path(tempfile.mkdtemp(prefix="bench-loras-"))
    unet = renderer.pipeline.unet
    paths = [write_lora(unet, folder, index, rank=args.lora_rank) for index in range(2)]
    loras = [LoraSpec(f"bench-lora-{index}", str(path), 0.8) for index, path in enumerate(paths)]
    specs = itertools.cycle(replace(spec(args, 0), loras=(lora,)) for lora in loras)
    render(renderer, [next(specs)], StepClock(args.device))  # compiled: the adapter-on graph
    graphs = compiled_graphs()
    row = timed_row(
        f"{label} LoRA switch", 1, lambda clock: render(renderer, [next(specs)], clock), args
    )
    row.note = (
        f"rank {args.lora_rank}; graphs compiled while switching: {compiled_graphs() - graphs}"
    )
    shutil.rmtree(folder, ignore_errors=True)
    return row


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def render(renderer: SDXLRenderer, specs: list[GenerationSpec], clock: StepClock) -> Any:
    return renderer.render_batch(specs, on_step=lambda *_: clock.tick())


def timed_row(name: str, images: int, run: Callable[[StepClock], Any], args: Any) -> Row:
    clock = StepClock(args.device)
    started = time.perf_counter()
    run(clock)  # warm-up (and, compiled, the compile)
    warmup = time.perf_counter() - started
    seconds, rates = [], []
    with MemoryPeak(args.device) as memory:
        for _ in range(args.repeat):
            clock = StepClock(args.device)
            clock.sync()
            started = time.perf_counter()
            run(clock)
            clock.sync()
            seconds.append(time.perf_counter() - started)
            rates.append(clock.rate())
    row = Row(name, images, statistics.median(seconds) / images, statistics.median(rates))
    row.peak_memory_mb = memory.peak_mb
    print(f"  {name}: warm-up {warmup:.1f} s, runs {', '.join(f'{s:.2f}' for s in seconds)} s")
    return row


# --- measuring


class StepClock:
    """Timestamps at the end of each denoising step; the rate leaves out the first step,
    which also covers encoding the prompts."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.stamps: list[float] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def tick(self, passthrough: Any = None) -> Any:
        self.sync()
        self.stamps.append(time.perf_counter())
        return passthrough

    def rate(self) -> float:
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


class MemoryPeak:
    """Peak memory while the block runs: CUDA's max allocated, or the process's RSS
    sampled every 5 ms on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryPeak:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()

    def _sample(self) -> None:
        import psutil  # a dependency of accelerate, so always installed

        process, peak = psutil.Process(), 0
        while not self._stop.wait(0.005):
            peak = max(peak, process.memory_info().rss)
        self.peak_mb = peak / 2**20


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def describe(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    cpu = platform.processor() or platform.machine()
    return f"{device} ({cpu}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def print_table(rows: list[Row], memory: str) -> None:
    print(f"{'':<30}{'imgs':>5}{'s/image':>9}{'UNet it/s':>11}{memory + ' MB':>18}{'speed-up':>10}")
    for row in rows:
        if row.seconds_per_image is None:
            print(f"{row.name:<30}{row.images_per_call:>5}   {row.note}")
            continue
        memory_mb = f"{row.peak_memory_mb:.0f}" if row.peak_memory_mb is not None else "-"
        print(f"{row.name:<30}{row.images_per_call:>5}{row.seconds_per_image:>9.3f}"
              f"{row.unet_it_per_s:>11.2f}{memory_mb:>18}"
              f"{row.speedup_vs_baseline:>9.2f}x")  # fmt: skip
    notes = [f"  {row.name}: {row.note}" for row in rows if row.note and row.seconds_per_image]
    print("\n".join(notes))


if __name__ == "__main__":
    raise SystemExit(main())
