"""`darkroom reproduce IMAGE`: render an image's embedded parameters again and compare."""

from __future__ import annotations

import argparse
import io
import sys

from darkroom_client.client import Client
from darkroom_client.commands import (
    Bar,
    resolve_loras,
    write_atomic,
)
from darkroom_client.errors import ValidationError


def cmd_reproduce(args: argparse.Namespace, client: Client) -> int:
    from PIL import Image

    from darkroom_client.infotext import (
        compare,
        image_format,
        image_settings,
        jpeg_quality,
        read_parameters,
        settings_from_infotext,
    )

    data = args.image.read_bytes()
    text = read_parameters(data)
    if not text:
        raise ValidationError(f"{args.image} holds no generation parameters")
    settings = {**settings_from_infotext(text), **image_settings(text)}
    init_image = needed_inputs(args, settings)
    prompt = settings.pop("prompt")
    tags = settings.pop("lora_tags")
    if tags:
        settings["loras"] = resolve_loras(client, tags)
    recorded = settings.pop("model", None), settings.pop("model_hash", None)
    settings["model"] = args.model or matching_model(client, *recorded)
    fmt = image_format(data)
    settings["format"] = fmt
    quality = args.quality if args.quality is not None else jpeg_quality(data)
    if quality is not None:
        settings["quality"] = quality
    settings["num_images"] = 1
    bar = Bar("reproduce", not args.no_progress)
    try:
        if init_image is None:
            generation = client.generate(prompt, on_progress=bar.progress, **settings)
        else:
            strength = settings.pop("denoising_strength")
            generation = client.edit(
                init_image, prompt, args.mask, strength, on_progress=bar.progress, **settings
            )
        bar.download(1)
        rendered = generation.images[0].bytes()
        bar.advance()
    finally:
        bar.close()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out / generation.images[0].file_name(generation.request_id), rendered)
    result = compare(Image.open(io.BytesIO(data)), Image.open(io.BytesIO(rendered)))
    result["request_id"] = generation.request_id
    if result["identical"]:
        print(f"identical: {args.image} rendered again pixel for pixel ({generation.request_id})")
        return 0
    if result["max_abs_diff"] is None:
        print(f"different: sizes differ {result['size']}")
        return 1
    psnr, diff = result["psnr"], result["max_abs_diff"]
    within = diff <= args.tolerance
    print(
        f"{'within tolerance' if within else 'different'}: max abs diff {diff}, "
        f"PSNR {psnr:.2f} dB ({generation.request_id})"
    )
    if not within and diff <= ROUNDING_LEVELS:
        # See docs/render-supervision.md: bit-exact needs both renders alone, on one kind
        # of device, with the same dtype.
        print(
            "  a rounding difference: was either render batched with other images on a GPU "
            "(a server with --max-batch above 1, or num_images above 1)? Both rendered "
            "alone give the same pixels; --tolerance N accepts N levels."
        )
    return 0 if within else 1


ROUNDING_LEVELS = 3  # below this a difference is rounding, not another image


def needed_inputs(args: argparse.Namespace, settings: dict) -> object:
    """The init image an image-to-image render needs (--init-image, and --mask for an
    inpainting), None for a text-to-image; a missing one is a one-line error."""
    if "denoising_strength" not in settings:
        if args.init_image is not None:
            raise ValidationError(f"{args.image} is not an image-to-image render: no --init-image")
        return None
    if args.init_image is None:
        raise ValidationError(
            f"{args.image} was made by image to image: reproducing it needs its init image"
            " (--init-image FILE" + (", --mask FILE)" if "mask_blur" in settings else ")")
        )
    if "mask_blur" in settings and args.mask is None:
        raise ValidationError(f"{args.image} was inpainted: reproducing it needs --mask FILE")
    return args.init_image


def matching_model(client: Client, name: str | None, short_hash: str | None) -> str | None:
    """The server's model the image names: by its hash first (names differ between
    boxes), then by name; None (the server's default) with a warning if it has neither."""
    if not name and not short_hash:
        return None
    models = client.models()
    for entry in models:
        if short_hash and (entry.get("hash") or "").startswith(short_hash[:10]):
            return entry["title"]
    for entry in models:
        if name in (entry.get("name"), entry.get("title")):
            return entry["title"]
    print(
        f"darkroom: warning: this server has no model {name or ''} [{short_hash or '?'}];"
        " rendering with its default model",
        file=sys.stderr,
    )
    return None
