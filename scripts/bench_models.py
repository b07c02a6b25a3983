"""Model loading and switching costs on this machine, side by side in one run.

    python scripts/bench_models.py                  # tiny-xl-blocks: a folder and its single file
    python scripts/bench_models.py --model-a A.safetensors --model-b B.safetensors \\
        --size 1024 --steps 30 --out results/models.json

Measures: loading a model from disk (a single-file checkpoint and a diffusers folder; the
files are in the OS page cache after the first read: the renderer keeps no RAM tier of
its own, so that cache is what a reload from RAM is on this machine), a switch between two
models both held (models_loaded=2), and the throughput of a workload that alternates
between two models: with both held, with room for one (every job reloads), and with room
for one but jobs grouped per model (what a queue that prefers the loaded model achieves).
Each figure is also given as a ratio to a plain render of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.sdxl import SDXLRenderer  # noqa: E402
from pipelines.spec import GenerationSpec, ModelSpec  # noqa: E402
from pipelines.tiny import build_tiny_model  # noqa: E402


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-models-") as scratch:
        models_dir = Path(scratch)
        build_tiny_model(models_dir, loras=0)
        a, b = args.model_a, args.model_b
        if a is None or b is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from checkpoint_builders import build_tiny_xl, to_single_file

            folder = build_tiny_xl(models_dir / "tiny-xl-blocks")
            b = b or str(folder)
            a = a or str(to_single_file(folder, models_dir / "tiny-xl-blocks.safetensors"))
        report = run(ModelSpec("a", a), ModelSpec("b", b), models_dir, args)
    print_report(report)
    write_report(report, args.out)
    return 0


def write_report(report: dict, out: Path | None) -> None:
    """The figures as JSON at `out` (nothing without one)."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-a", help="default: tiny-xl-blocks as a single file")
    parser.add_argument("--model-b", help="default: tiny-xl-blocks as a diffusers folder")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure (median)")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per workload")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    return parser.parse_args()


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(a: ModelSpec, b: ModelSpec, models_dir: Path, args: argparse.Namespace) -> dict:
    spec = GenerationSpec(
        "a lighthouse at dusk", "", args.size, args.size, args.steps, 5.0, "euler", (1,)
    )
    on_a, on_b = replace(spec, model=a), replace(spec, model=b)

    def renderer(slots: int) -> SDXLRenderer:
        return SDXLRenderer(
            a.source, models_dir, args.device, args.dtype, models_loaded=slots, model_key=a.key
        )

    held = renderer(2)
    held.render(on_a)
    held.render(on_b)  # both held, both warm
    render = median_seconds(lambda: held.render(on_a), args.repeats)

    def reload(model: ModelSpec) -> None:
        held.evict(model.key)
        held._ensure_loaded(model)  # the load alone, no render

    load_a = median_seconds(lambda: reload(a), args.repeats)
    load_b = median_seconds(lambda: reload(b), args.repeats)
    held.render(on_a)
    held.render(on_b)

    def switch_and_render() -> None:
        held.render(on_b)
        held.render(on_a)

    switched = median_seconds(switch_and_render, args.repeats) / 2

    def workload(slots: int, order: str) -> float:
        runner = renderer(slots)
        runner.render(on_a)
        jobs = [on_a if index % 2 == 0 else on_b for index in range(args.jobs)]
        if order == "grouped":
            jobs.sort(key=lambda job: job.model.key if job.model else "")
        start = time.perf_counter()
        for job in jobs:
            runner.render(job)
        return args.jobs / (time.perf_counter() - start)

    throughput = {
        "alternating, both held (models_loaded=2)": workload(2, "alternating"),
        "alternating, one held (models_loaded=1: a load per job)": workload(1, "alternating"),
        "grouped per model, one held (models_loaded=1)": workload(1, "grouped"),
    }
    return {
        "device": held.device,
        "dtype": held.dtype,
        "model_a": a.source,
        "model_b": b.source,
        "size": args.size,
        "steps": args.steps,
        "model_bytes": {key: held._models[key].size_bytes for key in held.loaded_models},
        "seconds": {
            "render (model held, same model as the last job)": render,
            "load from disk: model a": load_a,
            "load from disk: model b": load_b,
            "load from a RAM cache": None,
            "render right after a switch between two held models": switched,
        },
        "images_per_second": throughput,
    }


def print_report(report: dict) -> None:
    render = report["seconds"]["render (model held, same model as the last job)"]
    print(f"{report['device']} {report['dtype']}, {report['size']}px, {report['steps']} steps")
    print(f"a: {report['model_a']}\nb: {report['model_b']}")
    print(f"{'':60} {'seconds':>9} {'x render':>9}")
    for name, seconds in report["seconds"].items():
        if seconds is None:
            print(f"{name:60} {'n/a':>9} {'':>9}  (no RAM tier: the OS page cache is it)")
        else:
            print(f"{name:60} {seconds:9.4f} {seconds / render:9.2f}")
    best = report["images_per_second"]["alternating, both held (models_loaded=2)"]
    print(f"{'':60} {'images/s':>9} {'x held':>9}")
    for name, rate in report["images_per_second"].items():
        print(f"{name:60} {rate:9.2f} {rate / best:9.2f}")


if __name__ == "__main__":
    sys.exit(main())
