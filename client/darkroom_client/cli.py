"""The command line: generate, batch, grid, reproduce.

Mounted into the server's `darkroom` command (`add_commands` + `run`) and installed on its
own as `darkroom-client` for machines without the server."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from darkroom_client import __version__
from darkroom_client._core import SETTING_KWARGS, build_request, parse_size
from darkroom_client.client import Client
from darkroom_client.errors import DarkroomError, NotFound, ValidationError
from darkroom_client.models import Generation

COMMANDS = ("generate", "batch", "grid", "reproduce")
MAX_SEED = 2**32 - 1


# -- the parser ------------------------------------------------------------------------


def add_commands(subparsers: Any) -> None:
    """Add the client's commands to an argparse subparsers object."""
    generate = subparsers.add_parser("generate", help="render a prompt and save the images")
    generate.add_argument("prompt")
    _settings_arguments(generate)
    generate.add_argument("--n", type=int, help="images (num_images, 1-8)")
    generate.add_argument("--out", type=Path, default=Path("."), help="folder (default .)")
    _connection_arguments(generate)

    batch = subparsers.add_parser(
        "batch", help="one generation per JSON line; rerun to finish an interrupted batch"
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
    reproduce.add_argument("--model", help="render with this model instead of the recorded one")
    reproduce.add_argument("--quality", type=int, help="JPEG/WebP quality (default: detected)")
    reproduce.add_argument("--out", type=Path, help="also save the new render here")
    _connection_arguments(reproduce)


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
        "batch": cmd_batch,
        "grid": cmd_grid,
        "reproduce": cmd_reproduce,
    }
    try:
        with Client(args.url, args.token) as client:
            return commands[args.command](args, client)
    except DarkroomError as exc:
        return fail(exc.code, exc.message)
    except (ValueError, TypeError) as exc:
        return fail("VALIDATION_ERROR", str(exc))
    except OSError as exc:
        return fail("OS_ERROR", str(exc))
    except KeyboardInterrupt:
        return fail("INTERRUPTED", "stopped (rerun to continue)", 130)


def fail(code: str, message: str, status: int = 1) -> int:
    print(f"darkroom: {code}: {message}", file=sys.stderr)
    return status


# -- shared pieces ---------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace, client: Client) -> dict[str, Any]:
    settings: dict[str, Any] = {
        name: getattr(args, name, None)
        for name in (
            "seed",
            "steps",
            "cfg",
            "sampler",
            "model",
            "negative_prompt",
            "format",
            "quality",
        )
    }
    settings["size"] = args.size
    if getattr(args, "n", None) is not None:
        settings["num_images"] = args.n
    if args.lora:
        settings["loras"] = resolve_loras(client, args.lora)
    return {key: value for key, value in settings.items() if value is not None}


class LoraNames:
    """LoRA names (or file stems) to ids, from GET /loras/available, fetched once."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._entries: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def id_of(self, name: str) -> Any:
        text = name.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        with self._lock:
            if self._entries is None:
                self._entries = self.client.loras(include_incompatible=True)
        for entry in self._entries:
            stem = Path(str(entry.get("file") or "")).stem
            if text.lower() in (
                str(entry.get("name", "")).lower(),
                stem.lower(),
                str(entry.get("id")).lower(),
            ):
                return entry["id"]
        known = ", ".join(str(entry.get("name")) for entry in self._entries)
        raise ValidationError(
            f"no LoRA named {text!r} (known: {known or 'none'})",
            details={"fields": {"loras": f"unknown LoRA {text!r}"}},
        )


def resolve_loras(client: Client | LoraNames, specs: Iterable[Any]) -> list[dict[str, Any]]:
    """`NAME_OR_ID:WEIGHT` strings (or dicts / pairs) as the contract's LoRA list."""
    names = client if isinstance(client, LoraNames) else LoraNames(client)
    loras = []
    for spec in specs:
        if isinstance(spec, dict):
            loras.append({"id": names.id_of(str(spec["id"])), "weight": spec.get("weight", 1.0)})
            continue
        if isinstance(spec, (list, tuple)):
            loras.append({"id": names.id_of(str(spec[0])), "weight": float(spec[1])})
            continue
        name, sep, weight = str(spec).rpartition(":")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            name, value = str(spec), 1.0
        loras.append({"id": names.id_of(name if sep and name else str(spec)), "weight": value})
    return loras


class Bar:
    """A tqdm bar that follows one generation: queue position, steps, then download."""

    def __init__(self, label: str, enabled: bool, position: int | None = None) -> None:
        from tqdm import tqdm

        self.label = label
        self.bar = tqdm(
            total=1,
            desc=label,
            disable=not enabled,
            position=position,
            leave=enabled,
            file=sys.stderr,
            unit="step",
        )
        self._lock = threading.Lock()

    def progress(self, generation: Generation) -> None:
        with self._lock:
            if generation.status == "pending":
                where = generation.queue_position
                self.bar.set_description(
                    f"{self.label} queued" + (f" #{where}" if where is not None else "")
                )
            elif generation.status == "processing":
                total = generation.total_steps or self.bar.total
                if self.bar.total != total:
                    self.bar.reset(total=total)
                self.bar.set_description(f"{self.label} rendering")
                self.bar.n = generation.step or 0
                self.bar.refresh()

    def download(self, count: int) -> None:
        with self._lock:
            self.bar.reset(total=count)
            self.bar.unit = "image"
            self.bar.set_description(f"{self.label} download")

    def advance(self) -> None:
        with self._lock:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def save_generation(
    generation: Generation, body: dict[str, Any], out: Path, server: str, bar: Bar | None = None
) -> list[str]:
    """Write each image as `{request_id}-{seed}.{ext}` with a `.json` sidecar that holds the
    request that reproduces it (its own seed, one image), and the whole original request."""
    out.mkdir(parents=True, exist_ok=True)
    if bar:
        bar.download(len(generation.images))
    files = []
    for image in generation.images:
        name = image.file_name(generation.request_id)
        _write_atomic(out / name, image.bytes())
        single = json.loads(json.dumps(body))
        single.setdefault("settings", {})["seed"] = image.seed
        single.setdefault("options", {})["num_images"] = 1
        sidecar = {
            "request_id": generation.request_id,
            "file": name,
            "seed": image.seed,
            "server": server,
            "reproduce": single,
            "request": body,
            "image": image.metadata,
            "vault_url": image.vault_url,
            "credits_used": generation.raw.get("credits_used"),
            "client": f"darkroom-client {__version__}",
        }
        stem = name.rsplit(".", 1)[0]
        _write_atomic(out / f"{stem}.json", (json.dumps(sidecar, indent=2) + "\n").encode())
        files.append(name)
        if bar:
            bar.advance()
    return files


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.part")
    temp.write_bytes(data)
    os.replace(temp, path)


def _fixed_seed(body: dict[str, Any]) -> dict[str, Any]:
    """The body with a concrete seed, so the sidecar reproduces it even if it asked for -1."""
    settings = body.setdefault("settings", {})
    if settings.get("seed") in (None, -1):
        settings["seed"] = random.randint(0, MAX_SEED)
    return body


# -- generate --------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace, client: Client) -> int:
    body = _fixed_seed(build_request(args.prompt, **settings_from_args(args, client)))
    bar = Bar("generate", not args.no_progress)
    try:
        generation = client.generate(request=body, on_progress=bar.progress)
        files = save_generation(generation, body, args.out, client.url, bar)
    finally:
        bar.close()
    for name in files:
        print(args.out / name)
    return 0


# -- batch -----------------------------------------------------------------------------


class Manifest:
    """DIR/manifest.jsonl: one JSON object per event (submitted, then completed or
    failed), appended and fsynced, so a killed run leaves at worst a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def latest(self) -> dict[int, dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            for text in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(text)
                except ValueError:
                    continue  # a line torn by a kill
                if isinstance(record, dict) and isinstance(record.get("line"), int):
                    records[record["line"]] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size:
                with self.path.open("rb") as file:
                    file.seek(-1, os.SEEK_END)
                    if file.read(1) != b"\n":
                        data = b"\n" + data  # start after a torn line
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)


def batch_body(entry: Any, names: LoraNames) -> dict[str, Any]:
    """A batch line as a request body: the contract's shape, or flat settings."""
    if not isinstance(entry, dict):
        raise ValidationError("a line must be a JSON object")
    if "settings" in entry or "options" in entry:
        body = json.loads(json.dumps(entry))
        if body.get("loras"):
            body["loras"] = resolve_loras(names, body["loras"])
        return build_request(request=body)
    flat = dict(entry)
    prompt = flat.pop("prompt", None)
    if "loras" in flat and flat["loras"]:
        flat["loras"] = resolve_loras(names, flat["loras"])
    unknown = set(flat) - SETTING_KWARGS
    if unknown:
        raise ValidationError(
            f"unknown field(s) {', '.join(sorted(unknown))}",
            details={"fields": {name: "unknown" for name in sorted(unknown)}},
        )
    return build_request(prompt, **flat)


def cmd_batch(args: argparse.Namespace, client: Client) -> int:
    from tqdm import tqdm

    out: Path = args.out
    manifest = Manifest(out / "manifest.jsonl")
    done = manifest.latest()
    names = LoraNames(client)
    lines = args.file.read_text(encoding="utf-8").splitlines()
    todo: list[tuple[int, str]] = []
    finished = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        record = done.get(number)
        if (
            record
            and record.get("status") == "completed"
            and all((out / name).exists() for name in record.get("files") or [])
        ):
            finished += 1
            continue
        todo.append((number, text))
    concurrency = client.concurrency or _concurrency(client)
    failures = 0
    bar = tqdm(
        total=finished + len(todo),
        initial=finished,
        desc="batch",
        unit="gen",
        disable=args.no_progress,
        file=sys.stderr,
    )

    def one(number: int, text: str) -> dict[str, Any]:
        previous = done.get(number) or {}
        try:
            body = _fixed_seed(batch_body(json.loads(text), names))
        except ValueError as exc:
            if not isinstance(exc, DarkroomError):
                exc = ValidationError(f"not JSON: {exc}")
            return _failed(number, None, exc)
        except DarkroomError as exc:
            return _failed(number, None, exc)
        if previous.get("status") == "submitted" and previous.get("request_id"):
            # The last run was stopped while this one was rendering: pick it up.
            try:
                generation = client.wait(previous["request_id"])
                files = save_generation(
                    generation, previous.get("request") or body, out, client.url
                )
                return _completed(number, generation, files)
            except NotFound:
                pass
            except DarkroomError as exc:
                return _failed(number, previous["request_id"], exc)

        def submitted(generation: Generation) -> None:
            manifest.append(
                {
                    "line": number,
                    "request_id": generation.request_id,
                    "status": "submitted",
                    "files": [],
                    "error": None,
                    "request": body,
                }
            )

        try:
            generation = client.generate(request=body, on_submit=submitted)
            return _completed(
                number, generation, save_generation(generation, body, out, client.url)
            )
        except DarkroomError as exc:
            return _failed(number, exc.request_id, exc)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, number, text) for number, text in todo]
        for future in as_completed(futures):
            record = future.result()
            manifest.append(record)
            if record["status"] != "completed":
                failures += 1
                error = record["error"]
                tqdm.write(
                    f"darkroom: line {record['line']}: {error['code']}: {error['message']}",
                    file=sys.stderr,
                )
            bar.update(1)
    bar.close()
    print(
        f"{finished + len(todo) - failures} completed, {failures} failed; manifest: {manifest.path}"
    )
    return 1 if failures else 0


def _concurrency(client: Client) -> int:
    client.concurrency = client.concurrency or _account_limit(client)
    return client.concurrency


def _account_limit(client: Client) -> int:
    from darkroom_client._core import concurrency_from

    return concurrency_from(client.account())


def _completed(number: int, generation: Generation, files: list[str]) -> dict[str, Any]:
    return {
        "line": number,
        "request_id": generation.request_id,
        "status": "completed",
        "files": files,
        "error": None,
    }


def _failed(number: int, request_id: str | None, exc: DarkroomError) -> dict[str, Any]:
    return {
        "line": number,
        "request_id": request_id,
        "status": "failed",
        "files": [],
        "error": {"code": exc.code, "message": exc.message, "details": exc.details},
    }


# -- grid ------------------------------------------------------------------------------

AXIS_TYPES: dict[str, Callable[[str], Any]] = {
    "steps": int,
    "cfg": float,
    "cfg_scale": float,
    "seed": int,
    "width": int,
    "height": int,
    "size": str,
    "sampler": str,
    "model": str,
    "negative_prompt": str,
    "quality": int,
}


def parse_axis(text: str) -> tuple[str, list[Any]]:
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise ValueError(f"an axis is NAME=V1,V2,..., not {text!r}")
    if name.startswith("lora:"):
        convert: Callable[[str], Any] = float
    elif name in AXIS_TYPES:
        convert = AXIS_TYPES[name]
    else:
        raise ValueError(f"unknown axis {name!r} (one of {', '.join(AXIS_TYPES)} or lora:NAME)")
    try:
        parsed = [convert(value.strip()) for value in values.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"bad value in axis {text!r}") from None
    if name == "size":
        parsed = [f"{w}x{h}" for w, h in (parse_size(value) for value in parsed)]
    return name, [
        int(v) if isinstance(v, float) and v.is_integer() and name in ("cfg", "cfg_scale") else v
        for v in parsed
    ]


def _label(name: str, value: Any) -> str:
    return f"{name}: {value}"


def cmd_grid(args: argparse.Namespace, client: Client) -> int:
    axes = [parse_axis(text) for text in (args.x, args.y, args.z) if text]
    names_used = [name for name, _ in axes]
    if len(set(names_used)) != len(names_used):
        raise ValueError("each axis must vary a different setting")
    base = settings_from_args(args, client)
    base_loras = list(base.pop("loras", []))
    lora_names = LoraNames(client)
    if "seed" not in names_used and base.get("seed") in (None, -1):
        base["seed"] = random.randint(0, MAX_SEED)  # one seed for every cell
    x_name, x_values = axes[0]
    y_name, y_values = axes[1] if len(axes) > 1 else ("", [None])
    z_name, z_values = axes[2] if len(axes) > 2 else ("", [None])
    cells = list(
        itertools.product(range(len(z_values)), range(len(y_values)), range(len(x_values)))
    )

    def body_for(z: int, y: int, x: int) -> dict[str, Any]:
        settings = dict(base)
        loras = {entry["id"]: entry["weight"] for entry in base_loras}
        for name, value in ((x_name, x_values[x]), (y_name, y_values[y]), (z_name, z_values[z])):
            if not name:
                continue
            if name.startswith("lora:"):
                loras[lora_names.id_of(name[5:])] = value
            else:
                settings[name] = value
        settings["num_images"] = 1
        return build_request(args.prompt, loras=list(loras.items()) or None, **settings)

    bodies = {cell: body_for(*cell) for cell in cells}
    out: Path = args.out
    from tqdm import tqdm

    bar = tqdm(
        total=len(cells), desc="grid", unit="image", disable=args.no_progress, file=sys.stderr
    )
    results: dict[tuple[int, int, int], str] = {}
    with ThreadPoolExecutor(max_workers=max(1, _concurrency(client))) as pool:
        futures = {pool.submit(client.generate, request=bodies[cell]): cell for cell in cells}
        for future in as_completed(futures):
            cell = futures[future]
            generation = future.result()
            results[cell] = save_generation(generation, bodies[cell], out, client.url)[0]
            bar.update(1)
    bar.close()
    layout = []
    for z, z_value in enumerate(z_values):
        sheet_name = "grid.png" if not z_name else f"grid-{_slug(f'{z_name}-{z_value}')}.png"
        info = contact_sheet(
            [
                [out / results[(z, y, x)] for x in range(len(x_values))]
                for y in range(len(y_values))
            ],
            [_label(x_name, value) for value in x_values],
            [_label(y_name, value) for value in y_values] if y_name else [""],
            _label(z_name, z_value) if z_name else "",
            out / sheet_name,
        )
        layout.append(
            {
                "file": sheet_name,
                "z": z_value,
                **info,
                "cells": [
                    [results[(z, y, x)] for x in range(len(x_values))] for y in range(len(y_values))
                ],
            }
        )
        print(out / sheet_name)
    (out / "grid.json").write_text(
        json.dumps(
            {
                "x": [x_name, x_values],
                "y": [y_name, y_values],
                "z": [z_name, z_values],
                "sheets": layout,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("_")


def contact_sheet(
    rows: list[list[Path]],
    column_labels: list[str],
    row_labels: list[str],
    title: str,
    path: Path,
) -> dict[str, Any]:
    """AUTOMATIC1111's X/Y plot layout: column labels on top, row labels on the left, a
    title above for the Z value; white background, Pillow's default font."""
    from PIL import Image, ImageDraw, ImageFont

    images = [[Image.open(file).convert("RGB") for file in row] for row in rows]
    cell_w = max(image.width for row in images for image in row)
    cell_h = max(image.height for row in images for image in row)
    font = ImageFont.load_default(size=max(12, cell_h // 16))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        if not text:
            return 0, 0
        left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    pad = 8
    line_h = text_size("Ag")[1]
    title_h = line_h + 2 * pad if title else 0
    top = title_h + line_h + 2 * pad
    left = max((text_size(label)[0] for label in row_labels), default=0)
    left = left + 2 * pad if left else 0
    width, height = left + cell_w * len(column_labels), top + cell_h * len(row_labels)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((width // 2, pad + line_h // 2), title, fill="black", font=font, anchor="mm")
    for x, label in enumerate(column_labels):
        center = left + x * cell_w + cell_w // 2
        draw.text(
            (center, title_h + pad + line_h // 2), label, fill="black", font=font, anchor="mm"
        )
    for y, label in enumerate(row_labels):
        if label:
            draw.text(
                (left - pad, top + y * cell_h + cell_h // 2),
                label,
                fill="black",
                font=font,
                anchor="rm",
            )
    for y, row in enumerate(images):
        for x, image in enumerate(row):
            sheet.paste(image, (left + x * cell_w, top + y * cell_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG")
    _write_atomic(path, buffer.getvalue())
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "cell_width": cell_w,
        "cell_height": cell_h,
    }


# -- reproduce -------------------------------------------------------------------------


def cmd_reproduce(args: argparse.Namespace, client: Client) -> int:
    from PIL import Image

    from darkroom_client.infotext import (
        compare,
        image_format,
        jpeg_quality,
        read_parameters,
        settings_from_infotext,
    )

    data = args.image.read_bytes()
    text = read_parameters(data)
    if not text:
        raise ValidationError(f"{args.image} holds no generation parameters")
    settings = settings_from_infotext(text)
    prompt = settings.pop("prompt")
    tags = settings.pop("lora_tags")
    if tags:
        settings["loras"] = resolve_loras(client, tags)
    if args.model:
        settings["model"] = args.model
    fmt = image_format(data)
    settings["format"] = fmt
    quality = args.quality if args.quality is not None else jpeg_quality(data)
    if quality is not None:
        settings["quality"] = quality
    settings["num_images"] = 1
    bar = Bar("reproduce", not args.no_progress)
    try:
        generation = client.generate(prompt, on_progress=bar.progress, **settings)
        bar.download(1)
        rendered = generation.images[0].bytes()
        bar.advance()
    finally:
        bar.close()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        _write_atomic(args.out / generation.images[0].file_name(generation.request_id), rendered)
    result = compare(Image.open(io.BytesIO(data)), Image.open(io.BytesIO(rendered)))
    result["request_id"] = generation.request_id
    if result["identical"]:
        print(f"identical: {args.image} rendered again pixel for pixel ({generation.request_id})")
        return 0
    if result["max_abs_diff"] is None:
        print(f"different: sizes differ {result['size']}")
    else:
        psnr = result["psnr"]
        print(
            f"different: max abs diff {result['max_abs_diff']}, PSNR {psnr:.2f} dB "
            f"({generation.request_id})"
        )
    return 1


if __name__ == "__main__":
    sys.exit(main())
