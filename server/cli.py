"""The `darkroom` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from server.config import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--model",
        help="'tiny', a hub id, a local diffusers folder or a single-file .safetensors "
        "(default: SDXL base on CUDA, tiny elsewhere)",
    )
    serve.add_argument("--data-dir", type=Path, help="database and vault (default ./data)")
    serve.add_argument("--models-dir", type=Path, help="checkpoints/ and loras/ (default ./models)")
    serve.add_argument("--public-url", help="base of the absolute URLs handed to clients")
    serve.add_argument("--device", choices=["cuda", "mps", "cpu"], help="default: auto")
    serve.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: auto")
    serve.add_argument("--max-loras", type=int, help="LoRAs per request (default 5)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    tiny = commands.add_parser("tiny-model", help="write the tiny random SDXL model and LoRAs")
    tiny.add_argument("--models-dir", type=Path, required=True)
    tiny.add_argument("--loras", type=int, default=2, help="how many tiny LoRAs (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tiny-model":
        return tiny_model(args.models_dir, args.loras)
    return serve(vars(args))


def tiny_model(models_dir: Path, loras: int) -> int:
    from pipelines.tiny import build_tiny_model

    started = time.perf_counter()
    path = build_tiny_model(models_dir, loras=loras)
    print(f"wrote {path} and {loras} LoRA(s) in {time.perf_counter() - started:.1f}s")
    return 0


def serve(flags: dict) -> int:
    import uvicorn

    from server.app import create_app

    try:
        settings = Settings.load({k: v for k, v in flags.items() if k != "command"})
    except ValueError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
