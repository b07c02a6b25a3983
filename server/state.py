"""The server's state, opened when the app starts: store, vault, catalog, queue, worker.

Lifecycle, as in vLLM's API server: app.py builds the app, this module inits its state,
cli.py serves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from server.catalog import LoraCatalog
from server.config import Settings
from server.jobs import Admission, JobQueue
from server.store import Store
from server.vault import Vault
from server.worker import Renderer, Worker

log = logging.getLogger("darkroom")


@dataclass
class AppState:
    settings: Settings
    store: Store
    vault: Vault
    queue: JobQueue
    catalog: LoraCatalog
    admission: Admission
    worker: Worker
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


def default_renderer(settings: Settings) -> Renderer:
    from pipelines.sdxl import SDXLRenderer, default_model

    model = settings.model
    if model is None:
        model, reason = default_model()
        log.info("model: %s (%s)", model, reason)
    return SDXLRenderer(
        model,
        settings.models_dir,
        device=settings.device,
        dtype=settings.dtype,
        lora_cache_size=settings.lora_cache_size,
    )


def open_state(settings: Settings, renderer: Renderer | None) -> AppState:
    store = Store(settings.database_path)
    vault = Vault.open(settings.vault_dir)
    removed = vault.remove_orphans(store.referenced_files())
    if removed:
        log.info("removed %d orphaned file(s) from the vault", removed)
    catalog = LoraCatalog(store, settings.models_dir / "loras")
    catalog.refresh()
    queue = JobQueue()
    for row in store.recover(settings.max_attempts):
        queue.put(row["id"], row["work_units"])
    admission = Admission(store, catalog, queue, settings.max_loras)
    worker = Worker(renderer or default_renderer(settings), store, vault, queue, catalog, settings)
    worker.start()
    return AppState(settings, store, vault, queue, catalog, admission, worker)
