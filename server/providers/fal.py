"""fal.ai's queue API (/work/shared/notes/fal-queue-api.md, docs.fal.ai): submit to
`{url}/{app}`, follow the status URL it returns (IN_QUEUE -> IN_PROGRESS -> COMPLETED), fetch
the result, download its images. fast-sdxl takes no sampler; a request with LoRAs or
another sampler goes to fal-ai/lora, which takes `scheduler` names. An img2img goes to
fal-ai/fast-sdxl/image-to-image, an inpainting to fal-ai/fast-sdxl/inpainting (their init
image and mask as data URIs, server.providers.image_inputs); a job they cannot render as
asked (a hires fix, inpainting options they lack) is refused (`refusal`)."""

from __future__ import annotations

import contextlib
from typing import Any

from pipelines.spec import HiresFix, ImageInput
from server.config import Settings
from server.contract import MAX_SEED, ApiError, ErrorCode, ImageGenerationRequest
from server.net.ssrf import handed_url_problem
from server.providers.base import (
    Http,
    RemoteJob,
    RemoteProvider,
    RemoteResult,
    UpstreamError,
    redact_url,
    unusable_loras,
)
from server.providers.image_inputs import FalInputs, fal_inputs, fal_refusal

LORA_APP = "fal-ai/lora"
IMAGE_APP = "fal-ai/fast-sdxl/image-to-image"
INPAINT_APP = "fal-ai/fast-sdxl/inpainting"
LORA_APP_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
# fast-sdxl has no sampler field: it serves the contract's default sampler.
PLAIN_SAMPLERS = frozenset({"euler"})
# Darkroom's sampler names -> fal-ai/lora's `scheduler` values.
SCHEDULERS = {
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "euler": "Euler",
    "euler_a": "Euler A",
    "ddim": "DDIM",
}


def lora_url(row: dict[str, Any]) -> str:
    return str(row["meta"].get("url") or "").strip()


class FalProvider(RemoteProvider):
    name = "fal"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.url = settings.fal_url.rstrip("/")
        self.app = settings.fal_app.strip("/")
        self.http = Http(
            self.name,
            self.health,
            settings.remote_timeout,
            settings.remote_retries,
            settings.remote_retry_base,
            self.url,
            {"Authorization": f"Key {settings.fal_key}"},
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": redact_url(self.url), "app": self.app}

    def refusal(
        self, request: ImageGenerationRequest, image: ImageInput | None, hires: HiresFix | None
    ) -> str | None:
        reason = fal_refusal(image, hires)
        if reason is not None or image is None:
            return reason
        if request.settings.sampler not in PLAIN_SAMPLERS:
            return (
                f"sampler {request.settings.sampler!r} on image-to-image (its image endpoints"
                f" take no sampler: {', '.join(sorted(PLAIN_SAMPLERS))} only)"
            )
        if image.steps_run(request.settings.steps) == 0:  # the init image back, unchanged
            return "an img2img of no denoising step (steps x denoising_strength below 1)"
        return None

    def route(
        self,
        request: ImageGenerationRequest,
        loras: list[dict[str, Any]],
        image: ImageInput | None = None,
    ) -> tuple:
        """(app, scheduler or None) for a request; ApiError if fal cannot render it."""
        if image is not None:  # `refusal` said yes: the default sampler, LoRAs by URL
            return (INPAINT_APP if image.mask else IMAGE_APP), None
        sampler = request.settings.sampler
        if not loras and sampler in PLAIN_SAMPLERS:
            return self.app, None
        scheduler = SCHEDULERS.get(sampler)
        if scheduler is None:
            raise ApiError(
                ErrorCode.PROVIDER_ERROR,
                f"fal has no sampler {sampler!r}; it offers: {', '.join(SCHEDULERS)}",
                {"provider": self.name, "sampler": sampler, "available": list(SCHEDULERS)},
            )
        return LORA_APP, scheduler

    def check(self, request: ImageGenerationRequest, loras: list[dict[str, Any]]) -> None:
        missing = [row["id"] for row in loras if not lora_url(row)]
        if missing:
            reason = "fal needs a downloadable URL for it: set `url` in its sidecar .json"
            raise unusable_loras(self.name, loras, missing, reason)
        self.route(request, loras)

    def body(
        self, job: RemoteJob, scheduler: str | None, inputs: FalInputs | None = None
    ) -> dict[str, Any]:
        settings, options = job.request.settings, job.request.options
        body: dict[str, Any] = {
            "prompt": job.request.prompt,
            "negative_prompt": settings.negative_prompt,
            "image_size": {"width": settings.width, "height": settings.height},
            "num_inference_steps": settings.steps,
            "guidance_scale": settings.cfg_scale,
            "seed": job.seed,
            "num_images": options.num_images,
        }
        loras = [
            {"path": lora_url(row), "scale": ref.weight}
            for row, ref in zip(job.loras, job.request.loras, strict=True)
        ]
        if inputs is not None and job.image is not None:
            body.update(format="png", image_url=inputs.image_url,
                        strength=job.image.denoising_strength)  # fmt: skip
            if inputs.mask_url is not None:
                body["mask_url"] = inputs.mask_url
            if loras:
                body["loras"] = loras
        elif scheduler is None:
            body["format"] = "png"  # lossless; the vault encodes the requested format
        else:
            body.update(
                model_name=LORA_APP_MODEL,
                scheduler=scheduler,
                image_format="png",
                loras=loras,
            )
        return body

    def run(self, job: RemoteJob) -> RemoteResult:
        settings = job.request.settings
        # Made again on a resume: the overlay is needed once fal's images are back.
        inputs = fal_inputs(job.image, settings.width, settings.height) if job.image else None
        handle = job.handle
        if not handle or not handle.get("request_id"):
            handle = self._submit(job, inputs)
        while True:
            job.check()
            status = self.http.request("GET", handle["status_url"], what="status poll").json()
            state = status.get("status")
            if state == "IN_QUEUE":
                job.queued(status.get("queue_position"))
            elif state == "IN_PROGRESS":
                job.processing()
            elif state == "COMPLETED":
                if status.get("error"):
                    raise UpstreamError(
                        self.name,
                        f"fal failed the request: {status['error']}",
                        status=200,
                        detail={"error": status["error"], "error_type": status.get("error_type")},
                        reason=str(status.get("error_type") or "remote_failed"),
                    )
                break
            else:
                raise UpstreamError(
                    self.name, f"fal answered an unknown status {state!r}", 200, status
                )
            job.wait()
        job.processing()
        result = self.http.request("GET", handle["response_url"], what="result").json()
        urls = [str(image.get("url") or "") for image in result.get("images") or []]
        for url in urls:
            self._refuse_unsafe(url, "image")
        images = [self.http.image(url) for url in urls]
        if inputs is not None:
            images = [inputs.finish(image) for image in images]
        if not images:
            raise UpstreamError(self.name, "fal returned no images", 200, result, "no_images")
        seed = int(result.get("seed", job.seed))
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(len(images))]
        return RemoteResult(images, seeds, handle.get("app") or self.app)

    def _submit(self, job: RemoteJob, inputs: FalInputs | None) -> dict[str, Any]:
        app, scheduler = self.route(job.request, job.loras, job.image)
        answer = self.http.request(
            "POST", f"{self.url}/{app}", json=self.body(job, scheduler, inputs), idempotent=False,
            what="submit",
        ).json()
        request_id = answer["request_id"]
        # Status, result and cancel live under owner/app (a sub-path is only for submit).
        base = f"{self.url}/{'/'.join(app.split('/')[:2])}/requests/{request_id}"
        handle = {
            "provider": self.name,
            "app": app,
            "request_id": request_id,
            "status_url": answer.get("status_url") or f"{base}/status",
            "response_url": answer.get("response_url") or base,
            "cancel_url": answer.get("cancel_url") or f"{base}/cancel",
            "resumable": True,
        }
        for key in ("status_url", "response_url", "cancel_url"):
            self._refuse_unsafe(handle[key], key)
        job.save(handle)
        job.queued(answer.get("queue_position"))
        return handle

    def _refuse_unsafe(self, url: str, what: str) -> None:
        """fal's answers name URLs to fetch next: none may lead into the server's network."""
        problem = handed_url_problem(url, self.url)
        if problem:
            raise UpstreamError(
                self.name, f"fal handed back a URL Darkroom will not fetch ({what}): {problem}",
                detail={"url": url[:300]}, reason="refused_url",
            )

    def cancel(self, generation_id: int, handle: dict[str, Any] | None) -> None:
        if not handle or not handle.get("cancel_url"):
            return
        # 400 ALREADY_COMPLETED, or gone: nothing more to stop.
        with contextlib.suppress(UpstreamError):
            self.http.request("PUT", handle["cancel_url"], what="cancel")

    def close(self) -> None:
        self.http.close()
