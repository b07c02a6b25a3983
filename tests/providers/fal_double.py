"""A test double of fal.ai's queue API, written from fal's public documentation (docs.fal.ai:
model endpoints -> queue, inference API reference, errors) as gathered in
/work/shared/notes/fal-queue-api.md. It is not fal: it renders flat PNGs whose colour
depends on the seed, and its knobs script the failure modes Darkroom must survive.

- `POST /{owner}/{app}`: submit; `{status: IN_QUEUE, request_id, response_url,
  status_url, cancel_url, queue_position}`; 401 without `Authorization: Key <key>`;
  422 `{detail: [{loc, msg, type}]}` for a missing prompt or when `reject_422` is set.
- `POST /fal-ai/fast-sdxl/image-to-image` and `/fal-ai/fast-sdxl/inpainting`, by their
  pages on fal.ai/models (API and llms.txt): the text endpoint's inputs plus `image_url`
  (both) and `mask_url` (inpainting; white is repainted), which take a URL or a base64
  data URI, and `strength` (0.05 to 1, default 0.95). The double takes data URIs only: one
  that does not decode to an image, a missing `mask_url` or a `strength` out of range is
  a 422 naming the field. Its image depends on the input: the init image (resized to
  `image_size`) blended with the seed's colour by `strength`; for inpainting the seed's
  colour where the mask is white and the init image elsewhere.
- `GET /{owner}/{app}/requests/{id}/status`: 202 IN_QUEUE (`queue_position`) for
  `queue_polls` polls, then 202 IN_PROGRESS until `release` is set, then 200 COMPLETED
  (with `error`/`error_type` when `complete_error` is set).
- `GET /{owner}/{app}/requests/{id}`: the result, `{images: [{url, content_type, width,
  height}], seed, has_nsfw_concepts, prompt, timings}`.
- `PUT /{owner}/{app}/requests/{id}/cancel`: 202 CANCELLATION_REQUESTED (recorded), 400
  ALREADY_COMPLETED.
- `GET /files/{id}/{n}.png`: the images (`image_status` answers otherwise).
- `fail_next`: statuses the next requests get first (503, 502, ...), one each, with
  `fail_headers` (e.g. Retry-After); only requests to `fail_route` ("submit", "status",
  "result") when it is set. Every submit that reached the double is in `attempts`.
- `submit_delay`: seconds a submit is held (after it was taken) before it is answered.
- `image_base`: where the result's image URLs point (another host: they must be fetched
  without the key).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import threading
import time
import uuid
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from processes import free_port

KEY = "test-key-123"
IMAGE_APPS = ("fal-ai/fast-sdxl/image-to-image", "fal-ai/fast-sdxl/inpainting")


def colour(seed: int) -> tuple[int, int, int]:
    return (seed % 251, (seed // 251) % 241, 77)


class FalDouble:
    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.submits: list[dict[str, Any]] = []  # {app, body, request_id}
        self.cancels: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.fail_next: list[int] = []
        self.fail_headers: dict[str, str] = {}
        self.fail_route: str | None = None
        self.attempts = 0
        self.submit_delay = 0.0
        self.image_base: str | None = None
        self.reject_422 = False
        self.queue_polls = 1
        self.release = threading.Event()
        self.release.set()
        self.complete_error: str | None = None
        self.image_status = 200
        self.image_base: str | None = None  # where result images are said to be (self.url)
        self.lock = threading.Lock()
        app = Starlette(
            routes=[
                Route("/files/{rid}/{name}", self.file, methods=["GET"]),
                Route("/{owner}/{app}", self.submit, methods=["POST"]),
                Route("/{owner}/{app}/{path}", self.submit, methods=["POST"]),
                Route("/{owner}/{app}/requests/{rid}/status", self.status, methods=["GET"]),
                Route("/{owner}/{app}/requests/{rid}/cancel", self.cancel, methods=["PUT"]),
                Route("/{owner}/{app}/requests/{rid}", self.result, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", ws="none"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FalDouble:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the fal double did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.should_exit = True
        self.thread.join(10)

    def _scripted(self, request: Request, route: str) -> Response | None:
        if request.headers.get("authorization") != f"Key {self.key}":
            return JSONResponse({"detail": "Unauthorized"}, 401)
        with self.lock:
            if self.fail_next and self.fail_route in (None, route):
                code = self.fail_next.pop(0)
                return JSONResponse(
                    {"detail": "upstream trouble", "error_type": "runner_scheduling_failure"},
                    code,
                    headers={"X-Fal-Error-Type": "runner_scheduling_failure",
                             **self.fail_headers},
                )  # fmt: skip
        return None

    async def submit(self, request: Request) -> Response:
        with self.lock:
            self.attempts += 1
        scripted = self._scripted(request, "submit")
        if scripted is not None:
            return scripted
        body = await request.json()
        params = request.path_params
        app = "/".join(params[k] for k in ("owner", "app", "path") if k in params)
        if self.reject_422 or not body.get("prompt"):
            return invalid("prompt", "rejected")
        if "path" in params and app not in IMAGE_APPS:
            return JSONResponse({"detail": f"Application {app!r} not found"}, 404)
        if app in IMAGE_APPS:
            problem = image_problem(app, body)
            if problem is not None:
                return invalid(*problem)
        rid = uuid.uuid4().hex
        base = f"{self.url}/{params['owner']}/{params['app']}/requests/{rid}"
        with self.lock:
            self.submits.append({"app": app, "body": body, "request_id": rid})
            self.jobs[rid] = {"app": app, "body": body, "polls": 0, "cancelled": False}
        if self.submit_delay:
            await asyncio.sleep(self.submit_delay)
        return JSONResponse(
            {
                "status": "IN_QUEUE",
                "request_id": rid,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            }
        )

    async def status(self, request: Request) -> Response:
        scripted = self._scripted(request, "status")
        if scripted is not None:
            return scripted
        job = self.jobs.get(request.path_params["rid"])
        if job is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        job["polls"] += 1
        if job["polls"] <= self.queue_polls:
            return JSONResponse({"status": "IN_QUEUE", "queue_position": 3}, 202)
        if not self.release.is_set() or job["cancelled"]:
            return JSONResponse({"status": "IN_PROGRESS", "logs": None}, 202)
        answer: dict[str, Any] = {"status": "COMPLETED", "logs": None}
        if self.complete_error:
            answer.update(error=self.complete_error, error_type="runner_disconnected")
        return JSONResponse(answer, 200)

    async def result(self, request: Request) -> Response:
        scripted = self._scripted(request, "result")
        if scripted is not None:
            return scripted
        rid = request.path_params["rid"]
        job = self.jobs.get(rid)
        if job is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        body = job["body"]
        size = body.get("image_size") or {"width": 1024, "height": 1024}
        seed = int(body.get("seed") or 7)
        images = [
            {
                "url": f"{self.image_base or self.url}/files/{rid}/{i}.png",
                "content_type": "image/png",
                "width": size["width"],
                "height": size["height"],
            }
            for i in range(int(body.get("num_images") or 1))
        ]
        return JSONResponse(
            {"images": images, "seed": seed, "has_nsfw_concepts": [False] * len(images),
             "prompt": body["prompt"], "timings": {"inference": 0.01}}
        )  # fmt: skip

    async def cancel(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Key {self.key}":
            return JSONResponse({"detail": "Unauthorized"}, 401)
        rid = request.path_params["rid"]
        job = self.jobs.get(rid)
        if job is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        with self.lock:
            self.cancels.append(rid)
            job["cancelled"] = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)

    async def file(self, request: Request) -> Response:
        if self.image_status != 200:
            return Response(b"gone", self.image_status)
        job = self.jobs[request.path_params["rid"]]
        index = int(request.path_params["name"].split(".")[0])
        size = job["body"].get("image_size") or {"width": 1024, "height": 1024}
        seed = int(job["body"].get("seed") or 7) + index
        image = Image.new("RGB", (size["width"], size["height"]), colour(seed))
        if job["app"] in IMAGE_APPS:
            image = image_result(job["body"], image)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png")


def invalid(field: str, message: str) -> Response:
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, 422
    )


def decode(uri: Any) -> Image.Image | None:
    """A base64 data URI's image (None: not one, or not an image)."""
    if not isinstance(uri, str) or not uri.startswith("data:image/") or ";base64," not in uri:
        return None
    try:
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True)))
        image.load()
    except (binascii.Error, OSError, ValueError):
        return None
    return image


def image_problem(app: str, body: dict[str, Any]) -> tuple[str, str] | None:
    if decode(body.get("image_url")) is None:
        return "image_url", "not a base64 data URI of an image"
    if app.endswith("/inpainting") and decode(body.get("mask_url")) is None:
        return "mask_url", "field required: a base64 data URI of an image"
    strength = body.get("strength", 0.95)
    if not isinstance(strength, int | float) or not 0.05 <= strength <= 1:
        return "strength", "ensure this value is between 0.05 and 1"
    return None


def image_result(body: dict[str, Any], flat: Image.Image) -> Image.Image:
    init = decode(body["image_url"])
    assert init is not None  # checked at submit
    init = init.convert("RGB").resize(flat.size)
    if "mask_url" not in body:
        return Image.blend(init, flat, float(body.get("strength", 0.95)))
    mask = decode(body["mask_url"])
    assert mask is not None
    repaint = mask.convert("L").resize(flat.size).point(lambda x: 255 if x > 127 else 0)
    init.paste(flat, mask=repaint)
    return init
