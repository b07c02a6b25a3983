"""LoRA switching costs on this machine, each beside a plain render of the same run.

    python scripts/bench_loras.py                      # tiny model, LoRAs built for it
    python scripts/bench_loras.py --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --loras-dir models/loras --size 1024 --steps 30

Measures the first load of a LoRA, a switch between stacks already on the device, a
switch that evicts an adapter to make room, and memory (RSS on CPU, allocated memory on
CUDA) over many random switches, each of them followed by a one-step render.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipelines.sdxl import SDXLRenderer  # noqa: E402
from pipelines.spec import GenerationSpec, LoraSpec  # noqa: E402
from pipelines.tiny import build_tiny_model  # noqa: E402


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-loras-") as scratch:
        models_dir, loras_dir = args.models_dir, args.loras_dir
        if args.model == "tiny" and loras_dir is None:
            models_dir = Path(scratch)
            build_tiny_model(models_dir, loras=args.loras)
            loras_dir = models_dir / "loras"
        renderer = SDXLRenderer(
            args.model, models_dir, device=args.device, dtype=args.dtype,
            lora_cache_size=args.cache, lora_hotswap=args.hotswap,
        )  # fmt: skip
        renderer.load()
        loras = usable_loras(renderer, loras_dir, args.loras)
        if len(loras) < args.cache + 2:
            print(f"need at least {args.cache + 2} LoRAs that fit the model, found {len(loras)}")
            return 1
        run(renderer, loras, args)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--loras-dir", type=Path, help="LoRA files (default: built for tiny)")
    parser.add_argument("--loras", type=int, default=6, help="how many LoRAs to switch among")
    parser.add_argument("--cache", type=int, default=4, help="adapters kept on the device")
    parser.add_argument("--hotswap", action="store_true", help="merge into the UNet (compile)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def usable_loras(renderer: SDXLRenderer, folder: Path, count: int) -> list[LoraSpec]:
    fits = renderer.lora_compatibility
    found = []
    for path in sorted(folder.rglob("*.safetensors")):
        if fits(path) is None:
            key = hashlib.sha256(path.read_bytes()).hexdigest()
            found.append(LoraSpec(key, str(path), 1.0))
        if len(found) == count:
            break
    return found


def run(renderer: SDXLRenderer, loras: list[LoraSpec], args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    pipe, adapters = renderer.pipeline, renderer.adapters
    sync = torch.cuda.synchronize if renderer.device.startswith("cuda") else (lambda: None)

    def spec(stack: tuple[LoraSpec, ...] = (), steps: int = args.steps) -> GenerationSpec:
        side = args.size
        return GenerationSpec("a lighthouse", "", side, side, steps, 5.0, "euler", (1,), stack)

    def timed(action: Callable[[], object]) -> float:
        sync()
        started = time.perf_counter()
        action()
        sync()
        return time.perf_counter() - started

    def switch(stack: tuple[LoraSpec, ...]) -> float:
        return timed(lambda: adapters.apply(pipe, stack))

    renderer.render(spec())  # warm-up: kernels, allocator, scheduler
    plain = statistics.median(timed(lambda: renderer.render(spec())) for _ in range(3))
    first = [switch((lora,)) for lora in loras[: args.cache]]
    pair = (loras[0], loras[1])
    other = (loras[1], with_weight(loras[2], 0.6))
    stacked = statistics.median(timed(lambda: renderer.render(spec(pair))) for _ in range(2))
    cached = [switch(pair if i % 2 else other) for i in range(20)]
    evicting = []
    for i in range(10):
        # Always a LoRA that is not on the device: the least recently used one goes.
        missing = next(lora for lora in loras if lora.key not in adapters.loaded_keys)
        evicting.append(switch((missing, loras[i % 2])))
    adapters.apply(pipe, ())

    print(f"device {renderer.device} ({renderer.dtype}), model {renderer.model}, "
          f"{args.size}x{args.size}, {args.steps} steps, cache {args.cache}, "
          f"{len(loras)} LoRAs{', merged (hot-swap)' if args.hotswap else ''}")  # fmt: skip
    row("plain render", plain, plain)
    row("render with a 2-LoRA stack", stacked, plain)
    row("first load of a LoRA", statistics.median(first), plain)
    row("switch between cached stacks", statistics.median(cached), plain)
    row("switch that evicts (delete + load)", statistics.median(evicting), plain)
    memory_over_switches(renderer, loras, args.switches, rng, spec)


def memory_over_switches(
    renderer: SDXLRenderer,
    loras: list[LoraSpec],
    switches: int,
    rng: random.Random,
    spec: Callable[..., GenerationSpec],
) -> None:
    label, measure = memory_probe(renderer.device)
    seconds: list[float] = []
    readings: dict[int, float] = {}
    for i in range(1, switches + 1):
        size = rng.randint(0, 3)
        stack = tuple(
            with_weight(lora, rng.choice((0.0, 0.5, 1.0, 1.5))) for lora in rng.sample(loras, size)
        )
        started = time.perf_counter()
        renderer.render(spec(stack, steps=1))
        seconds.append(time.perf_counter() - started)
        if i in (20, switches // 2, switches) or i % 50 == 0:
            gc.collect()
            readings[i] = measure()
    start = readings[20]
    trend = ", ".join(f"{i}: {mb:.1f}" for i, mb in sorted(readings.items()))
    print(f"{switches} random switches (each + a 1-step render, median "
          f"{statistics.median(seconds):.3f} s): {label} MB after switch {trend}; "
          f"growth after switch 20: {readings[switches] - start:+.1f} MB")  # fmt: skip


def memory_probe(device: str) -> tuple[str, Callable[[], float]]:
    if device.startswith("cuda"):
        return "allocated", lambda: torch.cuda.memory_allocated() / 2**20

    import psutil  # a dependency of accelerate, so always installed

    process = psutil.Process()
    try:
        # Freed heap pages go back to the OS first, so RSS shows memory still in use.
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        trim = None

    def rss() -> float:
        if trim is not None:
            trim(0)
        return process.memory_info().rss / 2**20

    return "RSS", rss


def with_weight(lora: LoraSpec, weight: float) -> LoraSpec:
    return LoraSpec(lora.key, lora.path, weight)


def row(name: str, seconds: float, plain: float) -> None:
    amount = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    print(f"  {name:<38}{amount:>10}   {seconds / plain:6.3f} x a plain render")


if __name__ == "__main__":
    raise SystemExit(main())
