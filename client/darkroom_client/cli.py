"""The command line: generate, edit, batch, grid, reproduce, wait-ready.

Mounted into the server's `darkroom` command (`add_commands` + `run`) and installed on its
own as `darkroom-client` for machines without the server."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darkroom_client import __version__
from darkroom_client.batch import cmd_batch
from darkroom_client.bodies import OPTION_NAMES, SETTING_NAMES
from darkroom_client.client import Client
from darkroom_client.commands import cmd_edit, cmd_generate, fail
from darkroom_client.errors import DarkroomError
from darkroom_client.grid import cmd_grid
from darkroom_client.reproduce import cmd_reproduce
from darkroom_client.wait_ready import cmd_wait_ready

COMMANDS = ("generate", "edit", "batch", "grid", "reproduce", "wait-ready")
FLAT_KEYS = textwrap.fill(
    ", ".join(["prompt", *SETTING_NAMES, "size", *OPTION_NAMES, "loras"]),
    width=72,
    subsequent_indent="    ",
)
BATCH_FORMAT = f"""\
FILE has one JSON object per line (blank lines are skipped), either
  - a request body in the API's shape: {{"prompt", "settings", "loras", "options"}}, or
  - flat keys: {FLAT_KEYS}.
size is "WxH" or one number; loras a list of "NAME_OR_ID:WEIGHT" strings (a LoRA's
name, file stem or id) or {{"id": 3, "weight": 0.8}} objects. For example:
  {{"prompt": "a red fox", "size": "512x512", "steps": 20, "seed": 5, "n": 2}}
  {{"prompt": "a lighthouse", "cfg": 6, "sampler": "euler_a", "loras": ["Tiny Ink:0.6", "2:0.3"]}}
  {{"prompt": "a barn", "settings": {{"steps": 30}}, "loras": [{{"id": 1, "weight": 0.8}}]}}
Images go to OUT/ (each with a JSON sidecar), a record per line to OUT/manifest.jsonl;
run the same command again after an interruption to do only what is missing."""


# -- the parser ------------------------------------------------------------------------


def _hires_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hires", type=float, metavar="SCALE", help="hires fix: upscale by")
    parser.add_argument("--hires-upscaler", help="Latent (default), Lanczos, Nearest, ...")
    parser.add_argument("--hires-steps", type=int, help="second-pass steps (0: --steps)")
    parser.add_argument("--hires-strength", type=float, help="second-pass denoising (0.7)")


def add_commands(subparsers: Any) -> None:
    """Add the client's commands to an argparse subparsers object."""
    generate = subparsers.add_parser("generate", help="render a prompt and save the images")
    generate.add_argument("prompt")
    _settings_arguments(generate)
    generate.add_argument("--n", type=int, help="images (num_images, 1-8)")
    generate.add_argument("--out", type=Path, default=Path("."), help="folder (default .)")
    _hires_arguments(generate)
    _connection_arguments(generate)

    edit = subparsers.add_parser(
        "edit", help="image to image: rework IMAGE (or inpaint where --mask is white)"
    )
    edit.add_argument("image", type=Path)
    edit.add_argument("--prompt", required=True)
    edit.add_argument("--mask", type=Path, help="white repaints, black keeps")
    edit.add_argument(
        "--strength", type=float, default=0.75, help="denoising strength, 0-1 (default 0.75)"
    )
    edit.add_argument("--mask-blur", type=int, help="pixels (default 4)")
    _settings_arguments(edit)  # --size absent: IMAGE's own size
    edit.add_argument("--n", type=int, help="images (num_images, 1-8)")
    edit.add_argument("--out", type=Path, default=Path("."), help="folder (default .)")
    _hires_arguments(edit)
    _connection_arguments(edit)

    batch = subparsers.add_parser(
        "batch",
        help="one generation per JSON line; rerun to finish an interrupted batch",
        description="Render one generation per line of a JSON-lines file.",
        epilog=BATCH_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("file", type=Path, help="JSON lines: request bodies or flat settings")
    batch.add_argument("--out", type=Path, required=True)
    _connection_arguments(batch)

    grid = subparsers.add_parser("grid", help="an X/Y/Z plot: every combination, contact sheets")
    grid.add_argument("prompt")
    _settings_arguments(grid)
    for axis in ("x", "y", "z"):
        grid.add_argument(
            f"--{axis}",
            required=axis == "x",
            metavar="NAME=V1,V2",
            help="a setting (steps, cfg, sampler, seed, size, width, height, model, "
            "negative_prompt) or lora:NAME, and its values",
        )
    grid.add_argument("--out", type=Path, required=True)
    _connection_arguments(grid)

    reproduce = subparsers.add_parser(
        "reproduce", help="render an image again from its embedded parameters and compare"
    )
    reproduce.add_argument("image", type=Path)
    reproduce.add_argument(
        "--init-image", type=Path, help="an image-to-image render's init image (required then)"
    )
    reproduce.add_argument("--mask", type=Path, help="an inpainting render's mask")
    reproduce.add_argument("--model", help="render with this model instead of the recorded one")
    reproduce.add_argument("--quality", type=int, help="JPEG/WebP quality (default: detected)")
    reproduce.add_argument("--out", type=Path, help="also save the new render here")
    reproduce.add_argument(
        "--tolerance", type=int, default=0, metavar="N",
        help="accept up to N levels of difference per channel (exit 0; default 0: bit-exact)",
    )  # fmt: skip
    _connection_arguments(reproduce)

    ready = subparsers.add_parser(
        "wait-ready", help="wait until the server has loaded its model (/health answers 200)"
    )
    _connection_arguments(ready)  # its --timeout: how long to wait (default 600 s)


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, help="-1: random (default)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg", type=float, help="cfg_scale")
    parser.add_argument("--size", help="WxH, or one number for a square")
    parser.add_argument("--sampler")
    parser.add_argument("--model")
    parser.add_argument("--negative", dest="negative_prompt", help="negative prompt")
    parser.add_argument(
        "--lora", action="append", default=[], metavar="NAME_OR_ID:WEIGHT", help="repeatable"
    )
    parser.add_argument("--format", choices=["jpeg", "png", "webp"])
    parser.add_argument("--quality", type=int)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="server (default $DARKROOM_URL or http://127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default $DARKROOM_TOKEN)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up waiting for a generation after this long (TIMEOUT; it may still finish)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkroom-client", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; errors are one line on stderr and a non-zero exit."""
    commands: dict[str, Callable[[argparse.Namespace, Client], int]] = {
        "generate": cmd_generate,
        "edit": cmd_edit,
        "batch": cmd_batch,
        "grid": cmd_grid,
        "reproduce": cmd_reproduce,
        "wait-ready": cmd_wait_ready,
    }
    try:
        with Client(args.url, args.token, wait_timeout=args.timeout) as client:
            return commands[args.command](args, client)
    except DarkroomError as exc:
        return fail(exc.code, exc.message)
    except (ValueError, TypeError) as exc:
        return fail("VALIDATION_ERROR", str(exc))
    except OSError as exc:
        return fail("OS_ERROR", str(exc))
    except KeyboardInterrupt:
        return fail("INTERRUPTED", "stopped (rerun to continue)", 130)


if __name__ == "__main__":
    sys.exit(main())
