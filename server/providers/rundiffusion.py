"""rundiffusion: any server speaking AUTOMATIC1111's API (/work/shared/notes/automatic1111-api.md)
- a RunDiffusion session, Forge, SD.Next, another Darkroom. One blocking `txt2img` call
per job (in a thread; `img2img` for an img2img or inpainting, its init image and mask read
from the vault; txt2img's `enable_hr` for a hires fix), `/sdapi/v1/progress` polled
meanwhile. AUTOMATIC1111 has no request ids and one global `/sdapi/v1/interrupt`: a cancel
interrupts only while this very job's call is in flight and the remote says it renders; a
job not sent yet is just never sent. A job cut short by a restart is submitted again (same
seed and settings, so the same images), counted as a try."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from functools import cache
from pathlib import PurePath
from typing import Any

import httpx
from PIL import Image

from pipelines.samplers import UnsupportedSampler, a1111_samplers, a1111_schedulers, resolve
from pipelines.spec import HiresFix, ImageInput
from server.config import Settings
from server.contract import MAX_SEED, ApiError, ErrorCode, ImageGenerationRequest
from server.providers.base import (
    Http,
    RemoteJob,
    RemoteProvider,
    RemoteResult,
    UpstreamError,
    basic_auth,
    redact_url,
    unusable_loras,
)
from server.providers.image_inputs import vault_base64

LORA_LIST_SECONDS = 30.0


@cache
def a1111_names() -> dict[str, tuple[str, str]]:
    """Darkroom's sampler name -> AUTOMATIC1111's (sampler_name, scheduler), built from
    pipelines.samplers' own resolution, so the remote runs what Darkroom would."""
    names: dict[str, tuple[str, str]] = {}
    for sampler in a1111_samplers():
        for schedule in ["automatic", *(s["name"] for s in a1111_schedulers())]:
            try:
                names.setdefault(resolve(sampler["name"], schedule), (sampler["name"], schedule))
            except UnsupportedSampler:
                continue
    return names


def lora_names(row: dict[str, Any]) -> list[str]:
    """The names a remote may list this LoRA under: its file stem, then its display name."""
    stem = PurePath(row["path"]).name.removesuffix(".safetensors")
    return [name for name in (stem, row["meta"].get("name")) if name]


class RunDiffusion(RemoteProvider):
    name = "rundiffusion"
    serial = True

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        url = httpx.URL(settings.rundiffusion_url.rstrip("/"))
        # Credentials in the URL's user-info are used as the Basic ones, never shown.
        userinfo = url.userinfo.decode()
        credentials = settings.rundiffusion_auth or (userinfo if ":" in userinfo else "")
        self.url = str(url.copy_with(username=None, password=None))
        self.job_timeout = settings.job_timeout if settings.job_timeout > 0 else 24 * 3600.0
        self.http = Http(
            self.name,
            self.health,
            settings.remote_timeout,
            settings.remote_retries,
            settings.remote_retry_base,
            self.url,
            basic_auth(credentials) if credentials else None,
        )
        self._loras: tuple[float, set[str]] | None = None
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()  # jobs whose txt2img call has been sent

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": redact_url(self.url)}

    def remote_loras(self, fresh: bool = False) -> set[str]:
        """The names (and aliases) the remote lists at /sdapi/v1/loras, kept 30 s."""
        with self._lock:
            if not fresh and self._loras and time.monotonic() - self._loras[0] < LORA_LIST_SECONDS:
                return self._loras[1]
        try:
            listed = self.http.request("GET", f"{self.url}/sdapi/v1/loras", what="LoRA list")
        except UpstreamError as exc:
            self.health.failed(exc)
            raise ApiError(
                ErrorCode.PROVIDER_ERROR,
                f"Could not list the LoRAs of the rundiffusion server: {exc.message}",
                exc.error()["details"],
                502,
            ) from exc
        self.health.ok()
        names = {n for e in listed.json() for n in (e.get("name"), e.get("alias")) if n}
        with self._lock:
            self._loras = (time.monotonic(), names)
        return names

    def prefetch(self, request: ImageGenerationRequest) -> None:
        if request.loras:
            self.remote_loras()

    def sampler(self, request: ImageGenerationRequest) -> tuple[str, str]:
        found = a1111_names().get(request.settings.sampler)
        if found is None:
            raise ApiError(
                ErrorCode.PROVIDER_ERROR,
                f"sampler {request.settings.sampler!r} has no AUTOMATIC1111 equivalent",
                {"provider": self.name, "sampler": request.settings.sampler,
                 "available": sorted(a1111_names())},
            )  # fmt: skip
        return found

    def refusal(
        self, request: ImageGenerationRequest, image: ImageInput | None, hires: HiresFix | None
    ) -> str | None:
        if image is not None and hires is not None:
            return "a hires fix on an img2img (AUTOMATIC1111's img2img has none)"
        if hires is not None and hires.sampler and hires.sampler not in a1111_names():
            return f"hires sampler {hires.sampler!r} (no AUTOMATIC1111 equivalent)"
        return None

    def check(self, request: ImageGenerationRequest, loras: list[dict[str, Any]]) -> None:
        self.sampler(request)
        if not loras:
            return
        listed = self.remote_loras()
        missing = [row["id"] for row in loras if not set(lora_names(row)) & listed]
        if missing:
            reason = "the rundiffusion server does not list it at /sdapi/v1/loras"
            raise unusable_loras(self.name, loras, missing, reason)

    def body(self, job: RemoteJob) -> dict[str, Any]:
        request, settings = job.request, job.request.settings
        listed = self.remote_loras() if job.loras else set()
        tags = ""
        for row, ref in zip(job.loras, request.loras, strict=True):
            name = next((n for n in lora_names(row) if n in listed), lora_names(row)[0])
            tags += f" <lora:{name}:{ref.weight:g}>"
        sampler_name, scheduler = self.sampler(request)
        body = {
            "prompt": request.prompt + tags,
            "negative_prompt": settings.negative_prompt,
            "steps": settings.steps,
            "cfg_scale": settings.cfg_scale,
            "width": settings.width,
            "height": settings.height,
            "sampler_name": sampler_name,
            "scheduler": scheduler,
            "seed": job.seed,
            "batch_size": request.options.num_images,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
        }
        if job.image is not None:
            body.update(image_fields(job.image))
        if job.hires is not None:
            body.update(hires_fields(job.hires, settings.width, tags))
        return body

    def run(self, job: RemoteJob) -> RemoteResult:
        body = self.body(job)
        route = "img2img" if job.image is not None else "txt2img"
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["response"] = self.http.request(
                    "POST", f"{self.url}/sdapi/v1/{route}", json=body, idempotent=False,
                    timeout=self.job_timeout + 60, what=route,
                )
            except Exception as exc:  # handed to the job's thread
                outcome["error"] = exc
            finally:
                with self._lock:
                    self._in_flight.discard(job.generation_id)

        job.processing()
        job.check()  # cancelled meanwhile: never sent
        with self._lock:
            self._in_flight.add(job.generation_id)
        caller = threading.Thread(target=call, name="darkroom-rundiffusion", daemon=True)
        caller.start()
        while caller.is_alive():
            caller.join(job.poll_seconds)
            if not caller.is_alive():
                break
            job.check()
            self._progress(job)
        if "error" in outcome:
            raise outcome["error"]
        job.check()
        return self._result(job, outcome["response"].json())

    def _progress(self, job: RemoteJob) -> None:
        try:
            answer = self.http.client.get(
                f"{self.url}/sdapi/v1/progress", params={"skip_current_image": "true"}
            ).json()
        except (httpx.HTTPError, ValueError):
            return
        state = answer.get("state") or {}
        step, total = state.get("sampling_step"), state.get("sampling_steps")
        if isinstance(step, int) and isinstance(total, int) and total > 0:
            job.processing(min(step, total), total)

    def _result(self, job: RemoteJob, answer: dict[str, Any]) -> RemoteResult:
        images = []
        for data in answer.get("images") or []:
            image = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[-1])))
            image.load()
            images.append(image.convert("RGB"))
        if not images:
            raise UpstreamError(self.name, "the rundiffusion server returned no images", 200,
                                None, "no_images")  # fmt: skip
        try:
            info = json.loads(answer.get("info") or "{}")
        except ValueError:
            info = {}
        seeds = info.get("all_seeds") or [job.seed + i for i in range(len(images))]
        seeds = [int(s) % (MAX_SEED + 1) for s in seeds][: len(images)]
        seeds += [(seeds[-1] + 1 + i) % (MAX_SEED + 1) for i in range(len(images) - len(seeds))]
        model = info.get("sd_model_name") or self.name
        return RemoteResult(images, seeds, model, info.get("sd_model_hash"))

    def cancel(self, generation_id: int, handle: dict[str, Any] | None) -> None:
        """Interrupt the remote only while this job's own call is in flight and the remote
        reports a render: /interrupt stops whatever it renders, and a job still queued
        here (or a call of someone else's) must not be hit."""
        with self._lock:
            sent = generation_id in self._in_flight
        if not sent or not self._rendering():
            return
        with contextlib.suppress(UpstreamError):
            self.http.request("POST", f"{self.url}/sdapi/v1/interrupt", what="interrupt")

    def _rendering(self) -> bool:
        try:
            answer = self.http.client.get(f"{self.url}/sdapi/v1/progress").json()
        except (httpx.HTTPError, ValueError):
            return False
        state = answer.get("state") or {}
        return bool(state.get("job_count") or state.get("sampling_step") or answer.get("progress"))

    def close(self) -> None:
        self.http.close()


def image_fields(image: ImageInput) -> dict[str, Any]:
    """img2img's own fields: the init image and mask (vault paths) as bare base64."""
    return {
        "init_images": [vault_base64(image.init_image)],
        "mask": vault_base64(image.mask) if image.mask else None,
        "denoising_strength": image.denoising_strength,
        "resize_mode": image.resize_mode,
        "mask_blur": image.mask_blur,
        "inpainting_fill": image.inpainting_fill,
        "inpaint_full_res": image.inpaint_full_res,
        "inpaint_full_res_padding": image.inpaint_full_res_padding,
        "inpainting_mask_invert": int(image.inpainting_mask_invert),
        "include_init_images": False,
    }


def hires_fields(hires: HiresFix, width: int, tags: str) -> dict[str, Any]:
    """txt2img's hires fix: the target size and second-pass steps given outright (A1111 runs
    exactly `hr_second_pass_steps`, as Darkroom's HiresFix does)."""
    fields: dict[str, Any] = {
        "enable_hr": True,
        "hr_scale": hires.width / width,
        "hr_resize_x": hires.width,
        "hr_resize_y": hires.height,
        "hr_upscaler": hires.upscaler,
        "hr_second_pass_steps": hires.steps,
        "denoising_strength": hires.denoising_strength,
    }
    if hires.sampler:
        fields["hr_sampler_name"], fields["hr_scheduler"] = a1111_names()[hires.sampler]
    if hires.prompt is not None:
        fields["hr_prompt"] = hires.prompt + tags
    if hires.negative_prompt is not None:
        fields["hr_negative_prompt"] = hires.negative_prompt
    return fields
