"""Providers: where a generation renders. "darkroom" is this server's own device pool (the
worker and its queue, unchanged); fal and rundiffusion are remote, run by RemoteRunner.
`choose` decides at submit: the requested provider, or for "auto" the local pool unless no
local device is in service or the estimated local wait exceeds --overflow-after, then the
first configured remote of --overflow-to that can render the request as asked."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from server.config import Settings
from server.contract import PROVIDER_NAME, ApiError, ErrorCode, ImageGenerationRequest
from server.library.loras import ResolvedLora
from server.metrics import Metrics
from server.providers.base import RemoteProgress, RemoteProvider
from server.providers.fal import FalProvider
from server.providers.rundiffusion import RunDiffusion
from server.providers.runner import RemoteRunner
from server.store import Store
from server.store.cluster import ClusterStore
from server.store.vault import Vault

log = logging.getLogger("darkroom.providers")

LOCAL = PROVIDER_NAME
REMOTE_NAMES = ("fal", "rundiffusion")


def remote_providers(settings: Settings) -> dict[str, RemoteProvider]:
    """The remote providers the settings configure."""
    found: dict[str, RemoteProvider] = {}
    if settings.fal_key:
        found["fal"] = FalProvider(settings)
    if settings.rundiffusion_url:
        found["rundiffusion"] = RunDiffusion(settings)
    return found


class Providers:
    def __init__(
        self,
        store: Store,
        vault: Vault,
        settings: Settings,
        metrics: Metrics,
        local_in_service: Callable[[], bool],
        remotes: dict[str, RemoteProvider] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.local_in_service = local_in_service
        self.remotes = remote_providers(settings) if remotes is None else remotes
        self.runner = RemoteRunner(store, vault, settings, metrics, self.remotes)
        order = [name.strip() for name in settings.overflow_to.split(",") if name.strip()]
        unknown = [name for name in order if name not in REMOTE_NAMES]
        if unknown:
            raise ValueError(f"--overflow-to: unknown provider(s) {', '.join(unknown)}")
        self.overflow_to = [name for name in order if name in self.remotes]
        # Several nodes on PostgreSQL: a remote job is watched by the node that leases it.
        self.cluster: ClusterStore | None = None
        if self.remotes:
            log.info("remote providers: %s", ", ".join(self.remotes))

    def configured(self) -> list[str]:
        return list(self.remotes)

    def is_remote(self, provider: str | None) -> bool:
        return provider is not None and provider != LOCAL

    def prefetch(self, request: ImageGenerationRequest) -> None:
        """Off the event loop, before submit: what `check` needs from remotes (LoRA lists)."""
        wanted = request.options.provider
        names = self.overflow_to if wanted == "auto" else [wanted]
        for name in names:
            if name in self.remotes:
                try:
                    self.remotes[name].prefetch(request)
                except ApiError:
                    if wanted != "auto":
                        raise

    def choose(
        self,
        request: ImageGenerationRequest,
        loras: list[ResolvedLora],
        local_wait: Callable[[], float],
        parts: dict[str, Any] | None = None,
    ) -> str:
        """The provider a request renders on; ApiError if the requested one is not
        configured or cannot render it as asked. `parts`: an image-to-image's
        (image_jobs.image_parts), which a remote takes only if it can render them."""
        wanted = request.options.provider
        image, hires = (parts or {}).get("image"), (parts or {}).get("hires")
        if wanted != "auto":
            provider = self.remotes.get(wanted)
            if provider is None:
                raise ApiError(
                    ErrorCode.PROVIDER_ERROR,
                    f"Provider {wanted!r} is not configured on this server",
                    {"provider": wanted, "available": ["auto", *self.remotes]},
                )
            if request.settings.model:
                raise ApiError(
                    ErrorCode.PROVIDER_ERROR,
                    f"Provider {wanted!r} renders with its own model: settings.model applies"
                    " only to this server's models",
                    {"provider": wanted, "field": "settings.model"},
                )
            reason = provider.refusal(request, image, hires)
            if reason:
                raise ApiError(
                    ErrorCode.PROVIDER_ERROR,
                    f"Provider {wanted!r} cannot render this job: it does not take {reason};"
                    " with provider 'auto' it renders where it can",
                    {"provider": wanted, "reason": reason, "available": ["auto"]},
                )
            provider.check(request, self._rows(loras))
            return wanted
        if not self.overflow_to or request.settings.model:
            return LOCAL
        if self.local_in_service():
            limit = self.settings.overflow_after
            if limit <= 0 or local_wait() <= limit:
                return LOCAL
        for name in self.overflow_to:
            reason = self.remotes[name].refusal(request, image, hires)
            if reason:
                log.info("auto: %s cannot take this request (it does not take %s)", name, reason)
                continue
            try:
                self.remotes[name].check(request, self._rows(loras))
            except ApiError as exc:
                log.info("auto: %s cannot take this request (%s)", name, exc.message)
                continue
            return name
        return LOCAL

    def _rows(self, loras: list[ResolvedLora]) -> list[dict[str, Any]]:
        rows = []
        for lora in loras:
            row = self.store.lora_by_id(lora.id)
            assert row is not None  # just resolved
            rows.append({**row, "meta": json.loads(row["meta_json"])})
        return rows

    def dispatch(self, row: dict[str, Any]) -> bool:
        """Hand a remote generation to the runner (False: it is the local pool's)."""
        provider = row.get("provider")
        if not self.is_remote(provider):
            return False
        if provider not in self.remotes:
            self.store.fail(
                row["id"],
                {
                    "code": ErrorCode.PROVIDER_ERROR,
                    "message": f"Provider {provider!r} is no longer configured on this server",
                    "details": {"provider": provider, "available": ["auto", *self.remotes]},
                },
            )
            return True
        if self.cluster is not None and not self.cluster.watch_remote([provider], [row["id"]]):
            return True  # another node watches it already
        self.runner.dispatch(row["id"], provider, row["work_units"])
        return True

    def cancel(self, generation_id: int) -> bool:
        return self.runner.cancel(generation_id)

    # -- several nodes (server/jobs/cluster.py's RemoteWatch) ----------------------------------

    def watching(self) -> list[int]:
        return list(self.runner.jobs)

    def stop(self, generation_id: int, reason: str) -> None:
        """A cancel on another node ('cancelled'), or another node took the job ('lost')."""
        self.runner.stop(generation_id, reason)

    def adopt(self) -> int:
        if self.cluster is None:
            return 0
        rows = self.cluster.watch_remote(list(self.remotes))
        for row in rows:
            self.runner.dispatch(row["id"], row["provider"], row["work_units"])
        return len(rows)

    def progress_of(self, generation_id: int) -> RemoteProgress | None:
        return self.runner.jobs.get(generation_id)

    def health(self, local: dict[str, Any]) -> dict[str, Any]:
        views: dict[str, Any] = {LOCAL: {"configured": True, **local}}
        for name in REMOTE_NAMES:
            provider = self.remotes.get(name)
            if provider is None:
                views[name] = {"configured": False}
            else:
                views[name] = {**provider.describe(), "active": self.runner.active(name)}
        return views

    def close(self) -> None:
        self.runner.close()
        for provider in self.remotes.values():
            provider.close()
