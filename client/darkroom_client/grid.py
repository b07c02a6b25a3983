"""`darkroom grid`: AUTOMATIC1111's X/Y/Z plot: every combination of the axes, one labelled
contact sheet per Z value."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from darkroom_client.bodies import build_request, parse_size
from darkroom_client.client import Client
from darkroom_client.commands import (
    MAX_SEED,
    LoraNames,
    allowed_at_once,
    save_generation,
    settings_from_args,
    write_atomic,
)

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
    with ThreadPoolExecutor(max_workers=max(1, allowed_at_once(client))) as pool:
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
    write_atomic(path, buffer.getvalue())
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "cell_width": cell_w,
        "cell_height": cell_h,
    }
