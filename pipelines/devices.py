"""Which devices to render on: `--devices` parsed, and its default, decided without torch
(the server process never imports it).

The default is every visible CUDA device when there are two or more: /dev/nvidiaN files
(one per GPU on Linux, also inside containers given GPUs), at most as many as
CUDA_VISIBLE_DEVICES lists. With one or none it is one device chosen as before (`--device`,
else the render process picks CUDA, MPS or the CPU), so a single-GPU box and a laptop
behave exactly as they did. Where /dev/nvidiaN does not exist (WSL 2), name the devices.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

NONE = "none"  # no local rendering: an API-only node
_DEVICE = re.compile(r"(cpu|mps|cuda)(:\d+)?")


def parse_devices(value: str | None, device: str | None = None) -> list[str | None]:
    """`--devices` as a list of device strings ([] for "none"); None or "" means the
    default (see default_devices). None in the list: one device the renderer picks."""
    if value is None or not value.strip():
        return default_devices(device)
    if value.strip().lower() == NONE:
        return []
    specs = [part.strip().lower() for part in value.split(",")]
    for spec in specs:
        if not _DEVICE.fullmatch(spec):
            raise ValueError(
                f"--devices: {spec!r} is not a device (cpu, mps, cuda, cuda:N, or none)"
            )
    return list(specs)


def default_devices(
    device: str | None = None, environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")
) -> list[str | None]:
    gpus = visible_cuda_devices(environ, dev)
    if gpus >= 2 and device in (None, "cuda"):
        return [f"cuda:{index}" for index in range(gpus)]
    return [device]


def visible_cuda_devices(environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> int:
    environ = os.environ if environ is None else environ
    try:
        present = sum(1 for path in dev.iterdir() if re.fullmatch(r"nvidia\d+", path.name))
    except OSError:
        present = 0
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return present
    count = 0
    for entry in (part.strip() for part in listed.split(",")):
        if not entry or entry.startswith("-"):
            break  # CUDA ignores the list from its first invalid entry on
        count += 1
    return min(count, present)


def device_labels(specs: list[str | None]) -> list[str | None]:
    """Unique names: a device listed more than once is `cpu#0`, `cpu#1`; None stays None
    (named by what the renderer picked, once it has)."""
    labels: list[str | None] = []
    for index, spec in enumerate(specs):
        if spec is not None and specs.count(spec) > 1:
            labels.append(f"{spec}#{specs[:index].count(spec)}")
        else:
            labels.append(spec)
    return labels
