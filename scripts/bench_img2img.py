"""Image-to-image costs on this machine, side by side in one run.

    python scripts/bench_img2img.py                          # the tiny model on this device
    python scripts/bench_img2img.py --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --size 1024 --steps 30 --out results/img2img.json

Measures (median of --repeats, after one warm-up each): a txt2img render at SIZE, an
img2img of a SIZE image at strength 0.5 (A1111 runs ceil(steps * 0.5) steps, plus one
VAE encode), an inpainting at strength 0.5, a txt2img render at 2 x SIZE, and a hires fix
x2 (SIZE first pass, Latent upscale, `steps` second-pass steps at strength 0.5). Prints
img2img / txt2img (expected about 0.5 plus the encode) and hires / plain render at the
large size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.sdxl import SDXLRenderer  # noqa: E402
from pipelines.spec import GenerationSpec, HiresFix, ImageInput  # noqa: E402
from pipelines.tiny import build_tiny_model  # noqa: E402
from scripts.bench_models import median_seconds, write_report  # noqa: E402


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-img2img-") as scratch:
        root = Path(scratch)
        if args.model == "tiny":
            build_tiny_model(root, loras=0)
        report = run(root, args)
    for name, seconds in report["seconds"].items():
        print(f"{name:<28} {seconds:8.3f} s")
    for name, ratio in report["ratios"].items():
        print(f"{name:<28} {ratio:8.2f}x")
    write_report(report, args.out)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (median)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    return parser.parse_args()


def run(root: Path, args: argparse.Namespace) -> dict:
    size, steps = args.size, args.steps
    rng = np.random.default_rng(0)
    init = root / "init.png"
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(init)
    mask = root / "mask.png"
    square = Image.new("L", (size, size), 0)
    square.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    square.save(mask)
    renderer = SDXLRenderer(args.model, root, device=args.device, dtype=args.dtype)
    renderer.load()
    plain = GenerationSpec("a lighthouse at dusk", "", size, size, steps, 5.0, "euler", (1,))
    specs = {
        "txt2img": plain,
        "img2img 0.5": replace(plain, image=ImageInput(str(init), 0.5)),
        "inpaint 0.5": replace(
            plain, image=ImageInput(str(init), 0.5, mask=str(mask), inpaint_full_res=False)
        ),
        "txt2img 2x size": replace(plain, width=2 * size, height=2 * size),
        "hires x2": replace(plain, hires=HiresFix(2 * size, 2 * size, "Latent", steps, 0.5)),
    }
    seconds = {}
    for name, spec in specs.items():
        renderer.render(spec)  # warm-up
        seconds[name] = median_seconds(lambda spec=spec: renderer.render(spec), args.repeats)
    ratios = {
        "img2img 0.5 / txt2img": seconds["img2img 0.5"] / seconds["txt2img"],
        "inpaint 0.5 / txt2img": seconds["inpaint 0.5"] / seconds["txt2img"],
        "hires x2 / txt2img 2x size": seconds["hires x2"] / seconds["txt2img 2x size"],
    }
    device = renderer.device
    return {"device": device, "size": size, "steps": steps, "seconds": seconds, "ratios": ratios}


if __name__ == "__main__":
    sys.exit(main())
