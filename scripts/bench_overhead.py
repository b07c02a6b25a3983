"""The server's overhead: one generation through the whole server vs a direct pipeline call.

    .venv/bin/python scripts/bench_overhead.py                  # tiny model, 512x512, 30 steps
    .venv/bin/python scripts/bench_overhead.py --runs 3 --out overhead.json
    python scripts/bench_overhead.py --model random-sdxl --size 1024   # CUDA: SDXL's shapes

Loads the model in this process for the direct calls and, as `darkroom serve` does by
default, in a render process for the server (--no-render-process: the server borrows this
process's renderer and renders in its worker thread). Then alternates R times (after one
warm-up of each) between `renderer.render(spec)` called directly and the same request
submitted over HTTP to the real app (create_app served by uvicorn in a thread), polled
every --poll seconds until completed. The spec is built from the request by the worker's
own build_spec, so both paths render exactly the same thing; the PNGs are compared pixel
for pixel. Reports the medians, their ratio (target <= 1.05), the worker's render() call,
the server's own `generation_time`, and the cost of encoding and writing the image and its
thumbnail (Vault.save, measured separately).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.sdxl import SDXLRenderer  # noqa: E402
from pipelines.spec import GenerationSpec  # noqa: E402
from pipelines.tiny import build_tiny_model  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import Settings  # noqa: E402
from server.contract import ImageGenerationRequest  # noqa: E402
from server.jobs import infotext  # noqa: E402
from server.jobs.specs import build_spec  # noqa: E402
from server.state import default_renderer  # noqa: E402
from server.store.vault import Vault  # noqa: E402

HOST = "127.0.0.1"
TARGET_RATIO = 1.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", default="png", choices=["jpeg", "png", "webp"])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each path (R)")
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between status polls")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.9,
        help="no polls during this fraction of the direct render's time (0: poll from the"
        " submit on; on a small CPU 10 ms polls slow the render itself)",
    )
    parser.add_argument("--model", default="tiny", help="tiny, random-sdxl, or any --model")
    parser.add_argument(
        "--render-process",
        action=argparse.BooleanOptionalAction,
        default=Settings.render_process,
        help="the server renders in a child process, as `darkroom serve` does by default",
    )
    parser.add_argument("--models-dir", type=Path, help="default: build the tiny model")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    return parser.parse_args(argv)


class Lent:
    """The loaded renderer lent to the app: load() is a no-op, each render() is timed."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer
        self.model, self.device = renderer.model, renderer.device
        self.seconds: list[float] = []

    def load(self) -> None:
        pass

    def load_now(self) -> None:
        self._renderer.load()

    def render(self, spec: GenerationSpec, *args: Any, **kwargs: Any) -> list[Image.Image]:
        # The worker's callbacks (on_step, should_stop, on_latents) pass straight through.
        started = time.perf_counter()
        images = self._renderer.render(spec, *args, **kwargs)
        self.seconds.append(time.perf_counter() - started)
        return images

    def __getattr__(self, name: str) -> Any:
        # render_batch, free_memory, lora_compatibility: the real renderer's.
        return getattr(self._renderer, name)


class Served:
    """The app on a free port, uvicorn in a daemon thread (as `darkroom serve` would)."""

    def __init__(self, settings: Settings, renderer: Lent) -> None:
        config = uvicorn.Config(
            create_app(settings, renderer), host=HOST, port=settings.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.base = f"http://{HOST}:{settings.port}"
        self.http = httpx.Client(base_url=self.base, timeout=60)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.http.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit("the server did not become healthy in 120 s")

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_settings(args: argparse.Namespace, data_dir: Path, models_dir: Path) -> Settings:
    """Defaults, but no per-generation poll limit: the client here polls every 10 ms."""
    return Settings(
        data_dir=data_dir,
        models_dir=models_dir,
        model=args.model,
        port=free_port(),
        poll_rate=0.0,
        render_process=args.render_process,
    )


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": "a lighthouse at dusk, oil painting",
        "settings": {
            "width": args.size,
            "height": args.size,
            "steps": args.steps,
            "sampler": args.sampler,
            "seed": args.seed,
        },
        "options": {"num_images": 1, "format": args.format},
    }


def time_direct(renderer: SDXLRenderer, spec: GenerationSpec) -> tuple[float, Image.Image]:
    started = time.perf_counter()
    images = renderer.render(spec)
    return time.perf_counter() - started, images[0]


def time_served(
    served: Served, body: dict[str, Any], poll: float, quiet: float = 0.0
) -> tuple[float, dict[str, Any]]:
    """Submit -> status completed, as the client sees it (first poll after `quiet` s)."""
    started = time.perf_counter()
    response = served.http.post("/image/generate", json=body)
    response.raise_for_status()
    url = response.json()["poll_url"]
    time.sleep(quiet)
    while True:
        result = served.http.get(url).raise_for_status().json()
        if result["status"] == "completed":
            return time.perf_counter() - started, result
        if result["status"] == "failed":
            raise SystemExit(f"generation failed: {result}")
        time.sleep(poll)


def time_vault_save(
    image: Image.Image, spec: GenerationSpec, args: argparse.Namespace, scratch: Path
) -> list[float]:
    """What the server adds after the render: encode, thumbnail, temp file + fsync + rename."""
    vault = Vault.open(scratch / "vault-bench")
    parameters = infotext.for_generation({}, spec, spec.seeds[0], args.model, None, [])
    seconds = []
    for _ in range(max(args.runs, 5)):
        started = time.perf_counter()
        vault.save(image, args.format, 95, True, parameters)
        seconds.append(time.perf_counter() - started)
    return seconds


def server_wall(served: Served, request_id: str) -> float:
    """The server's own submit -> completed: the job row's created_at to completed_at."""
    items = served.http.get("/generations/history", params={"per_page": 5}).json()["items"]
    item = next(i for i in items if i["request_id"] == request_id)
    created, completed = (parse_iso(item[k]) for k in ("created_at", "completed_at"))
    return completed - created


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def same_pixels(served: Served, result: dict[str, Any], image: Image.Image) -> bool:
    data = served.http.get(result["images"][0]["url"]).raise_for_status().content
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes() == image.convert("RGB").tobytes()


@dataclass
class Runs:
    """The timed pairs, and the last direct image and server answer (compared at the end)."""

    direct: list[float] = field(default_factory=list)
    served: list[float] = field(default_factory=list)
    server_ms: list[int] = field(default_factory=list)
    rows: list[float] = field(default_factory=list)
    image: Image.Image | None = None
    result: dict[str, Any] = field(default_factory=dict)


def timed_pairs(
    args: argparse.Namespace, renderer: SDXLRenderer, spec: GenerationSpec, served: Served
) -> Runs:
    """A direct render, then the same request through the server; R times, alternating."""
    body, runs = request_body(args), Runs()
    for run in range(1, args.runs + 1):
        seconds, runs.image = time_direct(renderer, spec)
        wall, runs.result = time_served(served, body, args.poll, args.quiet * seconds)
        runs.direct.append(seconds)
        runs.served.append(wall)
        runs.server_ms.append(runs.result["images"][0]["metadata"]["generation_time"])
        runs.rows.append(server_wall(served, runs.result["request_id"]))
        log(f"run {run}/{args.runs}: direct {seconds:.3f} s, server {wall:.3f} s")
    return runs


def measure(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    models_dir = args.models_dir
    if models_dir is None:
        models_dir = scratch / "models"
        if args.model == "tiny":
            build_tiny_model(models_dir, loras=0)
    settings = server_settings(args, scratch / "data", models_dir)
    renderer = SDXLRenderer(args.model, models_dir)
    renderer.load()
    log(f"direct: {args.model} on {renderer.device}")
    spec = build_spec(ImageGenerationRequest.model_validate(request_body(args)), args.seed, [])
    # The server's own renderer: a render process (default) or this one, lent.
    lent = Lent(default_renderer(settings) if args.render_process else renderer)
    lent.load_now()
    with Served(settings, lent) as served:
        log("warm-up: one direct render, one through the server")
        time_direct(renderer, spec)
        time_served(served, request_body(args), args.poll)
        lent.seconds.clear()
        runs = timed_pairs(args, renderer, spec, served)
        assert runs.image is not None
        identical = same_pixels(served, runs.result, runs.image)
    saves = time_vault_save(runs.image, spec, args, scratch)
    result = figures(runs.direct, runs.served, lent.seconds, runs.server_ms, saves, identical)
    result["server_row_wall_s"] = {"median": round(statistics.median(runs.rows), 3)}
    result["device"] = renderer.device
    result["render_process"] = args.render_process
    return result


def figures(
    direct: list[float],
    served: list[float],
    worker: list[float],
    server_ms: list[int],
    saves: list[float],
    identical: bool,
) -> dict[str, Any]:
    med = statistics.median
    ratio = med(served) / med(direct)
    return {
        "direct_s": {"median": round(med(direct), 3), "runs": rounds(direct)},
        "server_wall_s": {"median": round(med(served), 3), "runs": rounds(served)},
        "ratio": round(ratio, 4),
        "pair_ratios": [round(s / d, 4) for s, d in zip(served, direct, strict=True)],
        "worker_render_s": {"median": round(med(worker), 3), "runs": rounds(worker)},
        "server_generation_time_s": {"median": round(med(server_ms) / 1000, 3)},
        "overhead_s": {
            "median": round(med([s - w for s, w in zip(served, worker, strict=True)]), 3)
        },
        "vault_save_s": {"median": round(med(saves), 4), "runs": rounds(saves, 4)},
        "pixels_identical": identical,
        "pass": ratio <= TARGET_RATIO,
    }


def rounds(values: list[float], digits: int = 3) -> list[float]:
    return [round(v, digits) for v in values]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    verdict = "PASS" if result["pass"] else "FAIL"
    print(
        f"\n== bench_overhead: {args.model}, {args.size}x{args.size}, {args.steps} steps, "
        f"{args.sampler}, seed {args.seed}, {args.format}; median of {args.runs} runs each "
        f"(after one warm-up), alternating; poll every {args.poll * 1000:g} ms after"
        f" {args.quiet:g} x the direct time"
    )
    lines = [
        ("direct renderer.render(spec)", f"{result['direct_s']['median']:.3f} s"),
        ("server: submit -> completed (client)", f"{result['server_wall_s']['median']:.3f} s"),
        (
            "ratio server / direct",
            f"{result['ratio']:.3f}  (<= {TARGET_RATIO})  {verdict}"
            f"  per pair: {result['pair_ratios']}",
        ),
        (
            "worker's render() call" + (" (render process)" if args.render_process else ""),
            f"{result['worker_render_s']['median']:.3f} s",
        ),
        ("server's generation_time", f"{result['server_generation_time_s']['median']:.3f} s"),
        (
            "server's created_at -> completed_at",
            f"{result['server_row_wall_s']['median']:.3f} s",
        ),
        ("overhead: wall - worker render", f"{result['overhead_s']['median']:.3f} s"),
        (
            f"of which Vault.save ({args.format} + webp thumb)",
            f"{result['vault_save_s']['median'] * 1000:.1f} ms (measured separately)",
        ),
        ("pixels identical to the direct render", "yes" if result["pixels_identical"] else "NO"),
    ]
    for name, value in lines:
        print(f"  {name:<40} {value}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="darkroom-overhead-") as scratch:
        result = measure(args, Path(scratch))
    report(result, args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
