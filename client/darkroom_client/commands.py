"""What the commands share: settings from flags, LoRA names, progress bars, saving
images with the sidecar that reproduces them, one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from darkroom_client import __version__
from darkroom_client.client import Client
from darkroom_client.errors import ValidationError
from darkroom_client.images import build_body, build_edit
from darkroom_client.models import Generation

MAX_SEED = 2**32 - 1


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
    settings["hires"] = hires_from_args(args)
    return {key: value for key, value in settings.items() if value is not None}


def hires_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """--hires SCALE, --hires-upscaler, --hires-steps, --hires-strength (any of them turns
    the hires fix on; the scale defaults to 2) as settings.hires."""
    hires = {
        field: getattr(args, flag, None)
        for field, flag in (
            ("scale", "hires"),
            ("upscaler", "hires_upscaler"),
            ("steps", "hires_steps"),
            ("denoising_strength", "hires_strength"),
        )
    }
    hires = {field: value for field, value in hires.items() if value is not None}
    return hires or None


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
        write_atomic(out / name, image.bytes())
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
        write_atomic(out / f"{stem}.json", (json.dumps(sidecar, indent=2) + "\n").encode())
        files.append(name)
        if bar:
            bar.advance()
    return files


def write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.part")
    temp.write_bytes(data)
    os.replace(temp, path)


def fixed_seed(body: dict[str, Any]) -> dict[str, Any]:
    """The body with a concrete seed, so the sidecar reproduces it even if it asked for -1."""
    settings = body.setdefault("settings", {})
    if settings.get("seed") in (None, -1):
        settings["seed"] = random.randint(0, MAX_SEED)
    return body


# -- generate --------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace, client: Client) -> int:
    body = fixed_seed(build_body(args.prompt, **settings_from_args(args, client)))
    return _render("generate", args, client, body, body)


def cmd_edit(args: argparse.Namespace, client: Client) -> int:
    """Image to image: the same progress bar and files as generate; the sidecars name the
    input files by path rather than holding their bytes."""
    settings = settings_from_args(args, client)
    if args.mask_blur is not None:
        settings["mask_blur"] = args.mask_blur
    body = fixed_seed(build_edit(args.image, args.prompt, args.mask, args.strength, **settings))
    recorded = {**body, "init_image": str(args.image)}
    if args.mask is not None:
        recorded["mask"] = str(args.mask)
    return _render("edit", args, client, body, recorded)


def _render(
    label: str,
    args: argparse.Namespace,
    client: Client,
    body: dict[str, Any],
    recorded: dict[str, Any],
) -> int:
    bar = Bar(label, not args.no_progress)
    try:
        generation = client.generate(request=body, on_progress=bar.progress)
        files = save_generation(generation, recorded, args.out, client.url, bar)
    finally:
        bar.close()
    for name in files:
        print(args.out / name)
    return 0


def allowed_at_once(client: Client) -> int:
    client.concurrency = client.concurrency or account_limit(client)
    return client.concurrency


def account_limit(client: Client) -> int:
    from darkroom_client._core import concurrency_from

    return concurrency_from(client.account())
