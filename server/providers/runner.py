"""RemoteRunner: one thread per remote job. It submits (or, after a restart, resumes the
submitted job by its stored handle), watches, passes a cancel or timeout on, and records
the images through the same ResultWriter as local jobs: copied into the vault, the hold
turned into the charge once, in the transaction that completes the job."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.config import Settings
from server.contract import ErrorCode, ImageGenerationRequest, error_object, stored_request
from server.jobs.failures import gave_up_error, provider_error, timeout_error
from server.jobs.image_jobs import image_parts
from server.jobs.results import ResultWriter, Task
from server.jobs.specs import build_spec
from server.library.loras import ResolvedLora
from server.metrics import Metrics
from server.providers.base import (
    RemoteJob,
    RemoteProgress,
    RemoteProvider,
    RemoteResult,
    Stopped,
    UpstreamError,
)
from server.store import Store
from server.store.generations import ACTIVE
from server.store.vault import Vault

log = logging.getLogger("darkroom.providers")


@dataclass(frozen=True)
class RemoteModel:
    """What the image records and infotext say of the model a remote rendered with."""

    name: str
    hash: str | None = None
    sha256: str | None = None


class RemoteRunner:
    def __init__(
        self,
        store: Store,
        vault: Vault,
        settings: Settings,
        metrics: Metrics,
        providers: dict[str, RemoteProvider],
    ) -> None:
        self.store = store
        self.vault = vault
        self.settings = settings
        self.providers = providers
        self.results = ResultWriter(store, vault, settings.url_ttl_hours * 3600, metrics)
        self.jobs: dict[int, RemoteProgress] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._serial = {name: threading.Lock() for name, p in providers.items() if p.serial}
        self._lock = threading.Lock()
        self._closed = False

    def dispatch(self, generation_id: int, provider: str, work_units: float = 0.0) -> None:
        """Start watching a job (just admitted, or found pending at start-up)."""
        with self._lock:
            if self._closed or generation_id in self.jobs:
                return
            progress = RemoteProgress(generation_id, work_units, provider=provider)
            self.jobs[generation_id] = progress
            thread = threading.Thread(
                target=self._run, args=(progress,), name=f"darkroom-{provider}", daemon=True
            )
            self._threads[generation_id] = thread
        thread.start()

    def cancel(self, generation_id: int) -> bool:
        return self.stop(generation_id, "cancelled")

    def stop(self, generation_id: int, reason: str) -> bool:
        job = self.jobs.get(generation_id)
        if job is None:
            return False
        job.request_stop(reason)
        return True

    def active(self, provider: str) -> int:
        return sum(1 for job in list(self.jobs.values()) if job.provider == provider)

    def close(self, timeout: float = 5.0) -> None:
        """Stop watching (the jobs stay as they are: a restart resumes them)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads.values())
            for job in self.jobs.values():
                job.request_stop("shutdown")
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, progress: RemoteProgress) -> None:
        generation_id = progress.generation_id
        try:
            self._work(progress)
        except Exception as exc:
            log.exception("remote job %d: failed", generation_id)
            self.store.fail(generation_id, provider_error(exc))
        finally:
            with self._lock:
                self.jobs.pop(generation_id, None)
                self._threads.pop(generation_id, None)

    @contextlib.contextmanager
    def _turn(self, progress: RemoteProgress) -> Iterator[None]:
        """A serial provider's jobs take turns (waiting counts as queued)."""
        lock = self._serial.get(progress.provider)
        if lock is None:
            yield
            return
        while not lock.acquire(timeout=0.1):
            if progress.stop.is_set():
                raise Stopped(progress.stop_reason or "cancelled")
        try:
            yield
        finally:
            lock.release()

    def _work(self, progress: RemoteProgress) -> None:
        generation_id = progress.generation_id
        row = self.store.generation_by_id(generation_id)
        if row is None or row["status"] not in ACTIVE:
            return
        provider = self.providers[progress.provider]
        request = stored_request(row["request_json"])
        loras = self._lora_rows(request)
        if loras is None:
            self.store.fail(generation_id, _gone_lora())
            return
        handle = json.loads(row["remote_json"]) if row["remote_json"] else None
        parts = image_parts(json.loads(row["request_json"]), self.vault)
        limit = self.settings.job_timeout
        job = RemoteJob(
            generation_id,
            request,
            row["seed"],
            loras,
            handle,
            progress,
            time.monotonic() + (limit if limit > 0 else float("inf")),
            lambda handle: self.store.save_remote(generation_id, handle),
            lambda: self.store.mark_remote_processing(generation_id),
            self.settings.remote_poll,
            **parts,
        )
        started = time.perf_counter()
        try:
            with self._turn(progress):
                if not (handle and handle.get("resumable")):
                    job.handle = None
                    submitting = {"provider": provider.name, "state": "submitting"}
                    if not self.store.remote_attempt(
                        generation_id, submitting, self.settings.max_attempts
                    ):
                        self.store.fail(generation_id, gave_up_error(self.settings.max_attempts))
                        return
                result = provider.run(job)
        except Stopped as stop:
            self._stopped(provider, job, stop.reason)
            return
        except UpstreamError as exc:
            provider.health.failed(exc)
            log.warning("remote job %s on %s: %s", row["request_id"], provider.name, exc.message)
            self.store.fail(generation_id, exc.error())
            return
        provider.health.ok()
        seconds = time.perf_counter() - started
        self._record(row, request, loras, progress, result, seconds, parts)

    def _stopped(self, provider: RemoteProvider, job: RemoteJob, reason: str) -> None:
        log.info("remote job %d on %s: stopped (%s)", job.generation_id, provider.name, reason)
        if reason in ("shutdown", "lost"):
            return  # stays active: the next start (or the node that took it) resumes it
        row = self.store.generation_by_id(job.generation_id)
        stored = json.loads(row["remote_json"]) if row and row["remote_json"] else None
        provider.cancel(job.generation_id, stored)
        if reason == "timeout":
            self.store.fail(job.generation_id, timeout_error(self.settings.job_timeout))

    def _lora_rows(self, request: ImageGenerationRequest) -> list[dict[str, Any]] | None:
        rows = []
        for ref in request.loras:
            row = self.store.lora_by_id(ref.id)
            if row is None:
                return None
            rows.append({**row, "meta": json.loads(row["meta_json"])})
        return rows

    def _record(
        self,
        row: dict[str, Any],
        request: ImageGenerationRequest,
        loras: list[dict[str, Any]],
        progress: RemoteProgress,
        result: RemoteResult,
        seconds: float,
        parts: dict[str, Any],
    ) -> None:
        generation_id = row["id"]
        if not self.store.mark_remote_processing(generation_id):
            return  # cancelled or failed meanwhile: nothing recorded or charged
        resolved = [
            ResolvedLora(lora["id"], lora["sha256"], Path(lora["path"]), ref.weight)
            for lora, ref in zip(loras, request.loras, strict=True)
        ]
        # With the image parts: the charge counts the steps an img2img or hires fix runs.
        spec = build_spec(request, result.seeds[0], resolved, **parts)
        spec = replace(spec, seeds=tuple(result.seeds))
        model = RemoteModel(result.model, result.model_hash)
        fresh = self.store.generation_by_id(generation_id) or row
        task = Task(progress, fresh, request, spec, resolved, model)  # type: ignore[arg-type]
        self.results.record(task, result.images, seconds)


def _gone_lora() -> dict[str, Any]:
    return error_object(
        ErrorCode.INVALID_LORA, "A LoRA of this request is no longer in the library", {}
    )
