"""AUTOMATIC1111's routes, served at the root only (SillyTavern builds `/sdapi/v1/…` URLs
that discard any path prefix)."""

from __future__ import annotations

from starlette.routing import Route

from server.api.a1111 import info
from server.api.a1111.img2img import img2img
from server.api.a1111.progress import interrupt, progress, skip
from server.api.a1111.txt2img import txt2img

_V1 = "/sdapi/v1"

A1111_ROUTES = [
    Route(f"{_V1}/txt2img", txt2img, methods=["POST"]),
    Route(f"{_V1}/img2img", img2img, methods=["POST"]),
    Route(f"{_V1}/progress", progress, methods=["GET"]),
    Route(f"{_V1}/interrupt", interrupt, methods=["POST"]),
    Route(f"{_V1}/skip", skip, methods=["POST"]),
    Route(f"{_V1}/options", info.get_options, methods=["GET"]),
    Route(f"{_V1}/options", info.set_options, methods=["POST"]),
    Route(f"{_V1}/sd-models", info.sd_models, methods=["GET"]),
    Route(f"{_V1}/samplers", info.samplers, methods=["GET"]),
    Route(f"{_V1}/schedulers", info.schedulers, methods=["GET"]),
    Route(f"{_V1}/loras", info.loras, methods=["GET"]),
    Route(f"{_V1}/refresh-loras", info.refresh_loras, methods=["POST"]),
    Route(f"{_V1}/refresh-checkpoints", info.refresh_checkpoints, methods=["POST"]),
    Route(f"{_V1}/upscalers", info.upscalers, methods=["GET"]),
    Route(f"{_V1}/latent-upscale-modes", info.latent_upscale_modes, methods=["GET"]),
    Route(f"{_V1}/sd-vae", info.empty_list, methods=["GET"]),
    Route(f"{_V1}/embeddings", info.embeddings, methods=["GET"]),
    Route(f"{_V1}/scripts", info.scripts, methods=["GET"]),
    Route(f"{_V1}/cmd-flags", info.cmd_flags, methods=["GET"]),
    Route(f"{_V1}/memory", info.memory, methods=["GET"]),
    Route(f"{_V1}/png-info", info.png_info, methods=["POST"]),
    Route("/internal/ping", info.ping, methods=["GET"]),
]
