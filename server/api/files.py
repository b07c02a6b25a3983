"""Image files: permanent capability links under /vault/, signed expiring ones under /files/."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from server.api.common import own_generation, user_of
from server.api.offload import off_loop
from server.contract import ApiError, ErrorCode, not_found
from server.jobs.image_jobs import inputs_of
from server.state import state_of
from server.store.vault import EXTENSIONS, MEDIA_TYPES


def _image_file(request: Request, name: str, in_vault_only: bool) -> Response:
    token, _, suffix = name.partition(".")
    image = state_of(request).store.image_by_token(token)
    if image is None or (in_vault_only and not image["in_vault"]):
        raise not_found("Image", name)
    if suffix == "thumb.webp":
        file_name, media_type = image["thumb_name"], "image/webp"
    elif suffix == EXTENSIONS[image["format"]]:
        file_name, media_type = image["file_name"], MEDIA_TYPES[image["format"]]
    else:
        raise not_found("Image", name)
    cache = "public, max-age=31536000, immutable" if in_vault_only else "private, max-age=3600"
    return FileResponse(
        state_of(request).vault.path(file_name),
        media_type=media_type,
        headers={"Cache-Control": cache},
    )


async def vault_file(request: Request) -> Response:
    return await off_loop(_image_file, request, request.path_params["name"], in_vault_only=True)


async def signed_file(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        expires = int(request.query_params.get("expires", ""))
    except ValueError:
        expires = 0
    if not state_of(request).vault.verify(name, expires, request.query_params.get("sig", "")):
        raise ApiError(
            ErrorCode.NOT_FOUND, "This link is invalid or has expired", {"name": name}, 404
        )
    return await off_loop(_image_file, request, name, in_vault_only=False)


async def generation_input(request: Request) -> Response:
    """GET /generations/{id}/inputs/{init_image|mask}: an image-to-image's input, for its
    owner (PNG, content-addressed in the vault)."""
    row = await off_loop(own_generation, request, await user_of(request))
    field = request.path_params["field"]
    item = inputs_of(json.loads(row["request_json"])).get(field)
    if item is None:
        raise not_found("Input image", field)
    return FileResponse(
        state_of(request).vault.path(item["name"]),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )
