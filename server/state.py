"""The server's state, opened when the app starts: store, vault, catalog, queue, worker.

Lifecycle, as in vLLM's API server: app.py builds the app, this module inits its state,
cli.py serves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from starlette.requests import Request

from server.accounts import Accounts, Authenticator
from server.catalog import LoraCatalog
from server.config import Settings
from server.jobs import Admission, JobQueue
from server.limits import RateLimiter
from server.metrics import Metrics
from server.render_process import ProcessRenderer
from server.store import Store
from server.vault import Vault
from server.worker import Renderer, Worker

log = logging.getLogger("darkroom")


@dataclass
class PollLimits:
    """Status polls: per generation (the contract's 1/s), and per user over all of their
    active generations together."""

    per_generation: RateLimiter
    per_user: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> PollLimits:
        users = max(1, settings.max_active_per_user)
        return cls(
            RateLimiter(settings.poll_rate, settings.poll_burst),
            RateLimiter(settings.poll_rate * users, settings.poll_burst * users),
        )

    def wait(self, user_id: int, request_id: str) -> float:
        """0 if the poll may go ahead; else seconds to wait. A refused poll costs nothing:
        hammering one generation must not use up the user's polls of the others."""
        wait = self.per_generation.acquire(request_id)
        if wait > 0:
            return wait
        wait = self.per_user.acquire(user_id)
        if wait > 0:
            self.per_generation.refund(request_id)
        return wait


@dataclass
class AppState:
    settings: Settings
    store: Store
    vault: Vault
    queue: JobQueue
    catalog: LoraCatalog
    admission: Admission
    worker: Worker
    accounts: Accounts
    auth: Authenticator
    polls: PollLimits
    metrics: Metrics
    draining: bool = False

    def drain(self) -> bool:
        """Refuse new generations, let the running job finish (up to the drain timeout) and
        keep the rest queued for the next start. True if nothing was cut short."""
        self.draining = True
        log.info("draining: waiting up to %gs for the running job", self.settings.drain_timeout)
        return self.worker.drain(self.settings.drain_timeout)

    def close(self) -> None:
        self.worker.stop()
        self.store.close()


def state_of(request: Request) -> AppState:
    return request.app.state.darkroom


def default_renderer(settings: Settings) -> Renderer:
    model = settings.model
    if model is None:
        from pipelines.sdxl import default_model

        model, reason = default_model()
        log.info("model: %s (%s)", model, reason)
    make = partial(
        sdxl_renderer,
        model,
        settings.models_dir,
        device=settings.device,
        dtype=settings.dtype,
        lora_cache_size=settings.lora_cache_size,
        compile=settings.compile,
        offload=settings.offload,
        vae_tiling_above=settings.vae_tiling_above or None,
        cpu_threads=settings.cpu_threads or None,
    )
    if not settings.render_process:
        return make()
    renderer = ProcessRenderer(make, model, latents_every=settings.preview_every)
    renderer.start()  # the child imports torch while this process opens its store
    return renderer


def sdxl_renderer(model: str, models_dir: Path, **options: Any) -> Renderer:
    from pipelines.sdxl import SDXLRenderer

    return SDXLRenderer(model, models_dir, **options)


def open_state(settings: Settings, renderer: Renderer | None, metrics: Metrics) -> AppState:
    store = Store(settings.database_path)
    vault = Vault.open(settings.vault_dir)
    removed = vault.remove_orphans(store.referenced_files())
    if removed:
        log.info("removed %d orphaned file(s) from the vault", removed)
    catalog = LoraCatalog(store, settings.models_dir / "loras")
    catalog.refresh()
    queue = JobQueue()
    for row in store.recover(settings.max_attempts):
        queue.put_row(row)
    admission = Admission(store, catalog, queue, settings)
    worker = Worker(
        renderer or default_renderer(settings), store, vault, queue, catalog, settings, metrics
    )
    worker.start()
    accounts = Accounts(store)
    state = AppState(
        settings,
        store,
        vault,
        queue,
        catalog,
        admission,
        worker,
        accounts,
        Authenticator(accounts, settings.host, settings.insecure_no_auth),
        PollLimits.from_settings(settings),
        metrics,
    )
    metrics.watch(state)
    return state
