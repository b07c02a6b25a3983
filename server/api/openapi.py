"""GET /openapi.json and /docs: the API described from the same pydantic models the server
validates with, so the document cannot drift from the code."""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from server.api import schemas
from server.api.admin import CreditGrant, NewUser
from server.api.idempotency import HEADER, MAX_KEY_LENGTH
from server.contract import (
    CONTRACT_PREFIX,
    HistoryQuery,
    SavePresetRequest,
    not_found,
)
from server.contract_images import ImageGenerateBody
from server.library.loras import LoraQuery

ERRORS = {
    400: "Invalid request (VALIDATION_ERROR, INVALID_LORA, LIMIT_EXCEEDED, PROVIDER_ERROR)",
    401: "Missing or invalid token (UNAUTHORIZED)",
    403: "Open mode refuses a Host or Origin not loopback or in --allowed-hosts, or an"
    " operator's route asked by a user who is not an administrator (FORBIDDEN)",
    402: "Not enough credits (QUOTA_EXCEEDED)",
    404: "Unknown (or someone else's) id (NOT_FOUND)",
    409: "A request with the same Idempotency-Key is still being admitted (CONFLICT),"
    " with Retry-After",
    413: "Request body, or an init_image or mask, too large (LIMIT_EXCEEDED)",
    422: "Idempotency-Key already used with a different request; an init_image or mask that"
    " is not a readable image, a mask without init_image, hires with init_image"
    " (VALIDATION_ERROR)",
    429: "Too many active generations or polls (LIMIT_EXCEEDED), with Retry-After",
    503: "Draining or queue full (SERVICE_UNAVAILABLE), with Retry-After; not ready (probes)",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    ok: tuple[int, type[BaseModel] | None, str] = (200, None, "OK")
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


ID = "{request_id}"
IDEMPOTENCY_KEY = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Up to 255 printable ASCII characters, unique per request (a UUID): a"
    " repeat with the same key and body within 24 h answers the first answer (header"
    " Idempotent-Replayed: true) and starts nothing",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
}
OPERATIONS = [
    Operation(
        "post", "/image/generate", "Submit a generation",
        (202, schemas.GenerationStatus, "Accepted: pending, with poll_url"),
        body=ImageGenerateBody, errors=(400, 401, 402, 409, 413, 422, 429, 503),
        extra={"idempotent": True},
    ),
    Operation(
        "get", f"/generations/{ID}/status", "Status of a generation",
        (200, schemas.GenerationStatus, "pending, processing, completed or failed"),
        errors=(401, 404, 429),
    ),
    Operation(
        "get", f"/generations/{ID}/events", "Status changes as Server-Sent Events",
        (200, None, "text/event-stream of status objects, ending after the final state"),
        errors=(401, 404),
    ),
    Operation(
        "post", f"/generations/{ID}/cancel", "Cancel a pending or running generation",
        (200, schemas.GenerationStatus, "The final status"), errors=(401, 404),
    ),
    Operation(
        "delete", f"/generations/{ID}",
        "Cancel a pending or running generation; delete an ended one (its owner only)",
        (200, schemas.DeleteResult, "The final status, or {request_id, status: deleted}"),
        errors=(401, 404),
    ),
    Operation(
        "get", "/samplers", "Every sampler settings.sampler takes, with A1111's names",
        (200, schemas.Samplers, "OK"), errors=(401,),
    ),
    Operation(
        "get", f"/generations/{ID}", "A generation's status and its webhook delivery",
        (200, schemas.GenerationDetail, "The status object plus webhook"),
        errors=(401, 404, 429),
    ),
    Operation(
        "get", "/generations/history", "Your generations, newest first",
        (200, schemas.HistoryPage, "One page"), query=HistoryQuery, errors=(400, 401),
    ),
    Operation(
        "get", "/loras/available", "LoRAs that fit the loaded model",
        (200, schemas.LoraEntry, "A list of LoRAs"), query=LoraQuery, errors=(400, 401),
        extra={"list": True},
    ),
    Operation(
        "post", "/loras/refresh", "Rescan models/loras/",
        (200, schemas.RefreshSummary, "What changed"), errors=(401,),
    ),
    Operation(
        "post", "/presets/save", "Save settings under a name (upsert)",
        (201, schemas.Preset, "Created (200 when updated)"), body=SavePresetRequest,
        errors=(400, 401, 413),
    ),
    Operation(
        "get", "/presets", "Your presets", (200, schemas.Preset, "A list of presets"),
        errors=(401,), extra={"list": True},
    ),
    Operation(
        "get", "/account", "Your user, credits and limits", (200, schemas.Account, "OK"),
        errors=(401,),
    ),
    # The operator's routes (administrators only; others 403).
    Operation(
        "get", "/admin/queue", "Every user's pending and processing generations",
        (200, schemas.AdminQueue, "Oldest first"), errors=(401, 403),
    ),
    Operation(
        "post", f"/admin/generations/{ID}/cancel", "Cancel anyone's generation",
        (200, schemas.AdminCancel, "Whether it was cancelled"), errors=(401, 403, 404),
    ),
    Operation(
        "get", "/admin/users", "Users, credits, charges, tokens, generations",
        (200, schemas.AdminUsers, "Every user"), errors=(401, 403),
    ),
    Operation(
        "post", "/admin/users", "Add a user; their token is shown once",
        (201, schemas.AdminNewUser, "Created"), body=NewUser, errors=(400, 401, 403, 413),
    ),
    Operation(
        "post", "/admin/users/{name}/credits", "Add credits (negative takes away)",
        (200, schemas.AdminCredits, "The balance"), body=CreditGrant,
        errors=(400, 401, 403, 404, 413),
    ),
    Operation(
        "post", "/admin/users/{name}/revoke", "Revoke every token of a user",
        (200, schemas.AdminRevoked, "How many were valid"), errors=(401, 403, 404),
    ),
    Operation(
        "get", "/admin/activity", "The last hour, per minute; render seconds per image",
        (200, schemas.Activity, "OK"), errors=(401, 403),
    ),
    Operation("get", "/health", "Summary for people", (200, schemas.Health, "Ready"),
              errors=(503,), public=True),
    Operation("get", "/health/live", "The process answers", (200, schemas.Liveness, "Alive"),
              public=True),
    Operation("get", "/health/ready", "Ready to render", (200, schemas.Readiness, "Ready"),
              errors=(503,), public=True),
]


@functools.cache
def build_document() -> dict[str, Any]:
    models = {
        model
        for op in OPERATIONS
        for model in (op.ok[1], op.body, schemas.ErrorResponse)
        if model is not None
    }
    keys, definitions = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    components = definitions.get("$defs", {})
    for model in (op.body for op in OPERATIONS if op.body is not None):
        _null_means_default(components, model.__name__)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        for prefix in ("", CONTRACT_PREFIX):
            paths.setdefault(prefix + op.path, {})[op.method] = _operation(op, keys)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Darkroom",
            "version": "1",
            "description": "Self-hosted SDXL speaking the ChatEnhanced image API contract v1."
            " Every route is also served under " + CONTRACT_PREFIX + ".",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _null_means_default(components: dict[str, Any], name: str) -> None:
    """Request fields may be null, meaning "the default" (contract.py parses them so)."""
    schema = components[name]
    required = set(schema.get("required", ()))
    for field_name, prop in schema["properties"].items():
        if field_name in required:
            continue
        inner = {k: v for k, v in prop.items() if k not in ("default", "description", "title")}
        outer = {k: v for k, v in prop.items() if k in ("default", "description", "title")}
        schema["properties"][field_name] = {"anyOf": [inner, {"type": "null"}], **outer}
        for ref in _refs(inner):
            _null_means_default(components, ref)


def _refs(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else []
        return found + [ref for value in schema.values() for ref in _refs(value)]
    if isinstance(schema, list):
        return [ref for item in schema for ref in _refs(item)]
    return []


def _operation(op: Operation, keys: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return keys[(model, "validation")]

    status, model, description = op.ok
    ok: dict[str, Any] = {"description": description}
    if model is not None:
        schema = {"type": "array", "items": ref(model)} if op.extra.get("list") else ref(model)
        ok["content"] = {"application/json": {"schema": schema}}
    elif op.path.endswith("/events"):
        # Each event (as OpenAPI 3.2 describes them): a status object as JSON in `data`.
        event = {
            "type": "object",
            "properties": {
                "event": {"const": "status"},
                "id": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": ref(schemas.GenerationStatus),
                },
            },
            "required": ["data"],
        }
        ok["content"] = {"text/event-stream": {"schema": event}}
    error = {"application/json": {"schema": ref(schemas.ErrorResponse)}}
    responses = {str(status): ok}
    if status == 201:
        responses["200"] = {**ok, "description": "Updated"}
    # Whatever needs a user may meet open mode's Host check.
    codes = sorted({*op.errors, 403}) if 401 in op.errors else op.errors
    for code in codes:
        # Health probes answer 503 with their usual body, saying what is not ready.
        content = ok["content"] if op.public else error
        responses[str(code)] = {"description": ERRORS[code], "content": content}
    operation: dict[str, Any] = {"summary": op.summary, "responses": responses}
    # Open mode (no users, loopback) needs no token, hence the empty alternative.
    operation["security"] = [] if op.public else [{}, {"bearer": []}]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    if op.extra.get("idempotent"):
        parameters.append(IDEMPOTENCY_KEY)
    if op.query is not None:
        properties = op.query.model_json_schema()["properties"]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in properties.items()
        ]
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(op.body)}},
        }
    return operation


async def openapi_json(request: Request) -> Response:
    return JSONResponse(build_document())


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Darkroom API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"});</script>
<noscript>The API description is at <a href="openapi.json">openapi.json</a>.</noscript>
</body></html>
"""
# Swagger UI 5 (OpenAPI 3.1) as the swagger-ui-py package ships it: served from here, so
# /docs works on a box with no internet. Found without importing the package (its Python
# side needs jinja2 and is not used).
_SWAGGER_SPEC = importlib.util.find_spec("swagger_ui")
SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}


def swagger_static_dir() -> Path:
    assert _SWAGGER_SPEC is not None and _SWAGGER_SPEC.submodule_search_locations
    return Path(next(iter(_SWAGGER_SPEC.submodule_search_locations))) / "static"


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in SWAGGER_ASSETS:
        raise not_found("File", name)
    return FileResponse(
        swagger_static_dir() / name,
        media_type=SWAGGER_ASSETS[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )
