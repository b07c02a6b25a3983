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

from pipelines.spec import Renderer
from server.api import views
from server.api.auth import Authenticator
from server.config import Settings
from server.jobs.admission import Admission
from server.jobs.failures import gave_up_error
from server.jobs.limits import PollLimits
from server.jobs.queue import JobQueue
from server.jobs.render_process import ProcessRenderer
from server.jobs.specs import describe_stored, enqueue_stored
from server.jobs.webhooks import RenderStatus, WebhookSender
from server.jobs.worker import Worker
from server.library.checkpoints import ModelCatalog
from server.library.layout import lora_dir
from server.library.loras import LoraCatalog
from server.metrics import Metrics
from server.store import Store
from server.store.accounts import Accounts
from server.store.database import is_postgres
from server.store.vault import Vault

log = logging.getLogger("darkroom")

# On a shared vault, files younger than this may be another node's render in flight.
ORPHAN_MIN_AGE_CLUSTER = 3600.0


@dataclass
class AppState:
    settings: Settings
    store: Store
    vault: Vault
    queue: JobQueue
    catalog: LoraCatalog
    models: ModelCatalog
    admission: Admission
    worker: Worker
    accounts: Accounts
    auth: Authenticator
    polls: PollLimits
    metrics: Metrics
    draining: bool = False
    webhooks: WebhookSender | None = None

    def drain(self) -> bool:
        """Refuse new generations, let the running job finish (up to the drain timeout) and
        keep the rest queued for the next start. True if nothing was cut short."""
        self.draining = True
        log.info("draining: waiting up to %gs for the running job", self.settings.drain_timeout)
        return self.worker.drain(self.settings.drain_timeout)

    def close(self) -> None:
        self.worker.stop()
        shutdown = getattr(self.queue, "shutdown", None)
        if shutdown is not None:  # a cluster queue: hand claims back, leave the cluster
            shutdown()
        if self.webhooks is not None:
            self.webhooks.stop()
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
        models_loaded=settings.models_loaded or None,
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
    store = Store(settings.database)
    cluster = is_postgres(settings.database)
    vault = Vault.open(settings.vault_dir, store.signing_key)
    # On a shared vault another node may have written a file it has not recorded yet.
    removed = vault.remove_orphans(
        store.referenced_files(), min_age=ORPHAN_MIN_AGE_CLUSTER if cluster else 0.0
    )
    if removed:
        log.info("removed %d orphaned file(s) from the vault", removed)
    # Started first: the render process imports torch while this one scans the folders.
    renderer = renderer or default_renderer(settings)
    catalog = LoraCatalog(store, lora_dir(settings.models_dir))
    catalog.refresh()
    models = ModelCatalog(store, settings.models_dir, renderer.model)
    models.refresh()
    queue = (
        cluster_queue(settings, store, models, catalog)
        if cluster
        else local_queue(settings, store, models, catalog)
    )
    worker = Worker(renderer, store, vault, queue, catalog, models, settings, metrics)
    admission = Admission(store, catalog, models, queue, settings, worker.measured_speed)
    worker.start()
    start = getattr(queue, "start", None)
    if start is not None:
        start()
    accounts = Accounts(store)
    state = AppState(
        settings,
        store,
        vault,
        queue,
        catalog,
        models,
        admission,
        worker,
        accounts,
        Authenticator(accounts, settings.host, settings.insecure_no_auth),
        PollLimits.from_settings(settings),
        metrics,
    )
    state.webhooks = WebhookSender(
        store,
        webhook_status(state),
        allow_private=settings.webhook_allow_private,
        timeout=settings.webhook_timeout,
        retry_scale=settings.webhook_retry_scale,
    )
    state.webhooks.start()
    return state


def local_queue(
    settings: Settings, store: Store, models: ModelCatalog, catalog: LoraCatalog
) -> JobQueue:
    """SQLite, one node: the queue in memory, jobs interrupted by a crash put back in it."""
    queue = JobQueue()
    for row in store.recover(settings.max_attempts, gave_up_error(settings.max_attempts)):
        enqueue_stored(queue, models, catalog, row)
    return queue


def cluster_queue(
    settings: Settings, store: Store, models: ModelCatalog, catalog: LoraCatalog
) -> JobQueue:
    """PostgreSQL: the shared queue. Only this node's own jobs (it restarted) and jobs whose
    lease expired go back to the queue; other nodes' running jobs are left alone."""
    from server.jobs.cluster import ClusterQueue
    from server.store.cluster import ClusterStore

    store.node_id = settings.node
    shared = ClusterStore(store, settings.node, settings.lease_seconds)
    gave_up = gave_up_error(settings.max_attempts)
    returned = shared.reclaim(settings.max_attempts, gave_up, own=True)
    if returned:
        log.info("returned %d job(s) to the shared queue (ours, or leases expired)", returned)
    log.info("node %s on the shared queue (leases of %gs)", settings.node, settings.lease_seconds)
    return ClusterQueue(
        shared,
        partial(describe_stored, models, catalog),
        settings.max_attempts,
        gave_up,
        devices=lambda: [settings.device or "auto"],
    )


def webhook_status(state: AppState) -> RenderStatus:
    """A webhook's body: the generation's status object, links under the stored base."""
    ttl = state.settings.url_ttl_hours * 3600

    def render(row: dict[str, Any], base: str) -> dict[str, Any]:
        done = row["status"] == "completed"
        images = state.store.images_of([row["id"]])[row["id"]] if done else []
        links = views.Links(base, state.vault, ttl)
        return views.generation(row, images, links, state.queue, state.admission)

    return render
