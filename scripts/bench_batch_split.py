"""What rendering a batch's UNet calls one image at a time costs (pipelines.placement.
unet_per_image, on wherever plan.batch_invariant is: the CPU), side by side in one run.

    python scripts/bench_batch_split.py                     # tiny model, 256 px, 2 and 4 images
    python scripts/bench_batch_split.py --size 512 --steps 8 --repeats 3

For each batch size: the seconds per image of one denoising loop whose UNet sees the whole
batch, of the same loop with one UNet call per image (bit-exact with lone renders), and of
the images rendered alone one after another; ratios to the whole-batch figure. It also
prints the largest pixel difference between each batched image and its lone render.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipelines.sdxl as sdxl  # noqa: E402
from pipelines.spec import GenerationSpec  # noqa: E402
from pipelines.tiny import build_tiny_model  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--images", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the plan's)")
    return parser.parse_args()


def timed(repeats: int, render) -> tuple[float, list]:  # type: ignore[no-untyped-def]
    times, images = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        images = render()
        times.append(time.perf_counter() - started)
    return statistics.median(times), images


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    split = sdxl.unet_per_image
    with tempfile.TemporaryDirectory(prefix="bench-split-") as scratch:
        build_tiny_model(Path(scratch), loras=0)
        renderer = sdxl.SDXLRenderer("tiny", scratch, cpu_threads=args.threads or None)
        renderer.load()
        size, steps = args.size, args.steps
        base = GenerationSpec("a lighthouse at dusk", "", size, size, steps, 5.0, "euler", (1,))
        renderer.render(base)  # warm
        print(f"device {renderer.device}, {size} px, {steps} steps, median of {args.repeats}")
        print(f"{'images':>6} {'whole batch':>12} {'per image':>16} {'alone':>16} max diff")
        for count in args.images:
            specs = [replace(base, seeds=(seed,)) for seed in range(count)]
            sdxl.unet_per_image = lambda unet, images: nullcontext()
            whole, together = timed(args.repeats, lambda s=specs: renderer.render_batch(s))
            sdxl.unet_per_image = split
            each, apart = timed(args.repeats, lambda s=specs: renderer.render_batch(s))
            alone_s, alone = timed(
                args.repeats, lambda s=specs: [renderer.render(one) for one in s]
            )
            diff = max(
                int(np.abs(np.asarray(a[0], int) - np.asarray(b[0], int)).max())
                for a, b in zip(apart, alone, strict=True)
            )
            old = max(
                int(np.abs(np.asarray(a[0], int) - np.asarray(b[0], int)).max())
                for a, b in zip(together, alone, strict=True)
            )
            print(
                f"{count:>6} {whole / count:>10.3f} s {each / count:>8.3f} s "
                f"({whole / each:4.2f}x) {alone_s / count:>8.3f} s ({whole / alone_s:4.2f}x) "
                f"{diff} (whole batch: {old})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
