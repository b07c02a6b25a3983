"""LoRAs as AUTOMATIC1111's prompt tags: `<lora:NAME:WEIGHT>` (and `<lyco:…>`).

As modules/extra_networks.py parses them: every `<(\\w+):([^>]+)>` is removed from the text
that is encoded; its arguments split on `:`, `key=value` ones named. For a LoRA
(extensions-builtin/Lora/extra_networks_lora.py): name, text-encoder weight (default 1),
UNet weight (default: the first), `te=`/`unet=` named forms. NAME is matched exactly
against file stems and aliases (`ss_output_name`, else the stem). Darkroom applies one
weight to a LoRA's text-encoder and UNet layers alike, so differing ones are refused, as
is `dyn`; an unknown name is left out and reported (A1111 generates without it too).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pipelines.lora_files import LoraFileError, read_header
from server.api.a1111.errors import Invalid
from server.library.loras import LoraCatalog, LoraQuery

log = logging.getLogger("darkroom.a1111")

TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


@dataclass
class Mentioned:
    name: str  # as the prompt wrote it
    lora_id: int
    sha256: str
    weight: float


@dataclass
class PromptLoras:
    text: str  # the prompt without its tags: what is encoded
    loras: list[Mentioned] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def lora_entries(catalog: LoraCatalog) -> list[dict[str, Any]]:
    """The catalog's LoRAs as A1111's /sdapi/v1/loras lists them, with their rows."""
    entries = []
    for row in catalog.available(LoraQuery(include_incompatible=True)):
        path = catalog.loras_dir / row["path"]
        try:
            metadata = read_header(path).metadata
        except (LoraFileError, OSError):
            metadata = {}
        entries.append(
            {
                "name": path.stem,
                "alias": metadata.get("ss_output_name") or path.stem,
                "path": str(path),
                "metadata": metadata,
                "row": row,
            }
        )
    return entries


def parse_tags(prompt: str, catalog: LoraCatalog) -> PromptLoras:
    tags: list[tuple[str, list[str]]] = []

    def found(match: re.Match[str]) -> str:
        tags.append((match.group(1), match.group(2).split(":")))
        return ""

    result = PromptLoras(TAG.sub(found, prompt))
    if not tags:
        return result
    entries = lora_entries(catalog)
    by_name = {e["name"]: e for e in entries}
    by_alias = {e["alias"]: e for e in entries}
    merged: dict[int, Mentioned] = {}
    for kind, args in tags:
        if kind not in LORA_KINDS:
            log.warning("prompt tag <%s:…> ignored: only LoRAs are supported", kind)
            continue
        name, weight = args[0], _weight(args)
        entry = by_name.get(name) or by_alias.get(name)
        if entry is None:
            log.warning("LoRA %r named in a prompt is not in the catalog; left out", name)
            result.not_found.append(name)
            continue
        row = entry["row"]
        if not row["compatible"]:
            raise Invalid(("prompt", f"LoRA {name!r} cannot be used: {row['reason']}"))
        if row["id"] in merged:  # the same LoRA twice: its weights add up
            merged[row["id"]].weight += weight
        else:
            merged[row["id"]] = Mentioned(name, row["id"], row["sha256"], weight)
    result.loras = list(merged.values())
    return result


def _weight(args: list[str]) -> float:
    positional = [a for a in args[1:] if "=" not in a]
    named = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    where = f"<lora:{':'.join(args)}>"
    try:
        te = float(named.get("te", positional[0] if positional else 1.0))
        unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
    except ValueError:
        raise Invalid(("prompt", f"{where}: weights must be numbers")) from None
    if not (math.isfinite(te) and math.isfinite(unet)):
        raise Invalid(("prompt", f"{where}: the weight must be a finite number"))
    if "dyn" in named or len(positional) > 2:
        raise Invalid(("prompt", f"{where}: dyn (dynamic rank) is not supported"))
    if te != unet:
        raise Invalid(("prompt", f"{where}: separate text-encoder and UNet weights are not "
                                 "supported; give one weight"))  # fmt: skip
    return unet
