"""The contract's request body from a prompt and flat keyword settings (`generate(prompt,
steps=20, size="512x512", n=2, loras=[(3, 0.8)])`); images.py adds image to image's."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from darkroom_client.errors import ValidationError

SETTING_NAMES = {
    "steps": "steps",
    "cfg": "cfg_scale",
    "cfg_scale": "cfg_scale",
    "sampler": "sampler",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "negative_prompt": "negative_prompt",
    "model": "model",
}
OPTION_NAMES = {
    "num_images": "num_images",
    "n": "num_images",
    "format": "format",
    "quality": "quality",
    "save_to_vault": "save_to_vault",
    "provider": "provider",
    "webhook_url": "webhook_url",
}
SETTING_KWARGS = frozenset({*SETTING_NAMES, *OPTION_NAMES, "size", "loras"})


def parse_size(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    text = str(size).lower().strip()
    width, sep, height = text.partition("x")
    try:
        return (int(width), int(height)) if sep else (int(text), int(text))
    except ValueError:
        raise ValueError(f"size must be WxH or a number, not {size!r}") from None


def lora_entries(loras: Iterable[Any] | None) -> list[dict[str, Any]]:
    """(id, weight) pairs, {"id", "weight"} dicts or bare ids, as the contract's list."""
    entries = []
    for lora in loras or []:
        if isinstance(lora, dict):
            entries.append({"id": lora["id"], "weight": lora.get("weight", 1.0)})
        elif isinstance(lora, (tuple, list)):
            entries.append({"id": lora[0], "weight": lora[1] if len(lora) > 1 else 1.0})
        else:
            entries.append({"id": lora, "weight": 1.0})
    return entries


def build_request(
    prompt: str | None = None, request: dict[str, Any] | None = None, **settings: Any
) -> dict[str, Any]:
    """The contract's request body from a prompt and flat keyword settings, merged over
    `request` (a body in the contract's shape) when one is given."""
    unknown = set(settings) - SETTING_KWARGS
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    body: dict[str, Any] = json.loads(json.dumps(request)) if request else {}
    if prompt is not None:
        body["prompt"] = prompt
    part_settings = dict(body.get("settings") or {})
    options = dict(body.get("options") or {})
    size = settings.pop("size", None)
    if size is not None:
        part_settings["width"], part_settings["height"] = parse_size(size)
    for name, value in settings.items():
        if value is None:
            continue
        if name in SETTING_NAMES:
            part_settings[SETTING_NAMES[name]] = value
        elif name in OPTION_NAMES:
            options[OPTION_NAMES[name]] = value
        elif name == "loras":
            body["loras"] = lora_entries(value)
    if "loras" in body:
        body["loras"] = lora_entries(body["loras"])
    if part_settings:
        body["settings"] = part_settings
    if options:
        body["options"] = options
    if not isinstance(body.get("prompt"), str):
        raise ValidationError(
            "a prompt is required",
            details={"fields": {"prompt": "required"}},
        )
    return body
