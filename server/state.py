"""The server's state, opened when the app starts: store, vault, catalog, queue, worker.

Lifecycle, as in vLLM's API server: app.py builds the app, this module inits its state,
cli.py serves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from starlette.requests import Request

from pipelines.spec import Renderer
from server.api import views
from server.api.auth import Authenticator
from server.config import Settings
from server.jobs.admission import Admission
from server.jobs.devices import DevicePool, device_names, device_settings
from server.jobs.failures import caller_gone_error, cancelled_error, gave_up_error
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
from server.providers.router import Providers
from server.store import Store
from server.store.accounts import Accounts
from server.store.database import is_postgres
from server.store.figures import DatabaseFigures
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
    worker: Worker | None
    accounts: Accounts
    auth: Authenticator
    polls: PollLimits
    metrics: Metrics
    figures: DatabaseFigures
    draining: bool = False
    webhooks: WebhookSender | None = None
    providers: Providers | None = None
    # Every device's worker (`worker` is the first; None with --devices none).
    devices: DevicePool = field(default_factory=lambda: DevicePool([]))

    def drain(self) -> bool:
        """Refuse new generations, let the running job finish (up to the drain timeout) and
        keep the rest queued for the next start. True if nothing was cut short."""
        self.draining = True
        log.info("draining: waiting up to %gs for the running job", self.settings.drain_timeout)
        return self.devices.drain(self.settings.drain_timeout)

    def cancel(self, generation_id: int) -> bool:
        """Stop a generation wherever it is: out of the queue, stopped at its next step, or
        (a remote job) passed on to its runner; failed CANCELLED now, so nothing it makes is
        recorded or charged. False if it had already ended."""
        # The row first: a running job told to stop could otherwise end itself, cancelled,
        # before this call's own answer is decided (and it would say "nothing to cancel").
        cancelled = self.store.fail(generation_id, cancelled_error())
        self.queue.cancel(generation_id)
        if self.providers is not None:
            self.providers.cancel(generation_id)
        return cancelled

    def close(self) -> None:
        if self.providers is not None:
            self.providers.close()
        self.devices.stop()
        shutdown = getattr(self.queue, "shutdown", None)
        if shutdown is not None:  # a cluster queue: hand claims back, leave the cluster
            shutdown()
        self.queue.close()
        if self.webhooks is not None:
            self.webhooks.stop()
        self.figures.close()
        self.store.close()


def state_of(request: Request) -> AppState:
    return request.app.state.darkroom


def default_model_name(settings: Settings) -> str:
    if settings.model is not None:
        return settings.model
    from pipelines.sdxl import default_model

    model, reason = default_model()
    log.info("model: %s (%s)", model, reason)
    return model


def device_renderers(settings: Settings) -> list[Renderer]:
    """One renderer (render process) per device of --devices."""
    each = device_settings(settings)
    if not each:
        return []
    model = default_model_name(settings)
    return [default_renderer(replace(one, model=model)) for one in each]


def default_renderer(settings: Settings) -> Renderer:
    model = default_model_name(settings)
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
    process = ProcessRenderer(make, model, latents_every=settings.preview_every)
    process.start()  # the child imports torch while this process opens its store
    return process


def sdxl_renderer(model: str, models_dir: Path, **options: Any) -> Renderer:
    from pipelines.sdxl import SDXLRenderer

    return SDXLRenderer(model, models_dir, **options)


def open_state(
    settings: Settings, renderer: Renderer | list[Renderer] | None, metrics: Metrics
) -> AppState:
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
    if renderer is None:
        renderers = device_renderers(settings)
    else:
        renderers = renderer if isinstance(renderer, list) else [renderer]
    catalog = LoraCatalog(store, lora_dir(settings.models_dir))
    catalog.refresh()
    default = renderers[0].model if renderers else default_model_name(settings)
    models = ModelCatalog(store, settings.models_dir, default)
    models.refresh()
    pool: DevicePool | None = None
    providers = Providers(store, vault, settings, metrics, lambda: local_in_service(pool))
    queue = (
        cluster_queue(settings, store, models, catalog, providers)
        if cluster
        else local_queue(settings, store, models, catalog, providers)
    )
    pool = DevicePool.build(
        renderers,
        device_names(settings) if renderer is None else [],
        settings,
        lambda one, health: Worker(
            one, store, vault, queue, catalog, models, settings, metrics, health
        ),
    )
    admission = Admission(store, catalog, models, queue, settings, vault, pool.measured_speed)
    admission.router = providers
    pool.start()
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
        pool.primary,
        accounts,
        Authenticator(
            accounts, settings.host, settings.insecure_no_auth, settings.allowed_hosts
        ),
        PollLimits.from_settings(settings),
        metrics,
        DatabaseFigures(store),
        providers=providers,
        devices=pool,
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


def local_in_service(pool: DevicePool | None) -> bool:
    """Whether one of this server's own devices can take work (provider auto overflows to
    a remote if not)."""
    return pool is not None and pool.any_usable() and any(
        worker.state == "ready" and worker.alive and worker.stuck_job is None
        for worker in pool.workers
    )


def local_queue(
    settings: Settings,
    store: Store,
    models: ModelCatalog,
    catalog: LoraCatalog,
    providers: Providers,
) -> JobQueue:
    """SQLite, one node: the queue in memory, jobs interrupted by a crash put back in it
    (a remote provider's job resumes with its provider instead)."""
    queue = JobQueue()
    gave_up = gave_up_error(settings.max_attempts)
    for row in store.recover(settings.max_attempts, gave_up, caller_gone_error()):
        if not providers.dispatch(row):
            enqueue_stored(queue, models, catalog, row)
    return queue


def cluster_queue(
    settings: Settings,
    store: Store,
    models: ModelCatalog,
    catalog: LoraCatalog,
    providers: Providers,
) -> JobQueue:
    """PostgreSQL: the shared queue. Only this node's own jobs (it restarted) and jobs whose
    lease expired go back to the queue; other nodes' running jobs are left alone. Remote
    jobs no node watches (this node's before it restarted, too) are watched again by the
    first node with their provider to see them, resumed by their stored handle."""
    from server.jobs.cluster import ClusterQueue
    from server.store.cluster import ClusterStore

    store.node_id = settings.node
    shared = ClusterStore(store, settings.node, settings.lease_seconds)
    gave_up = gave_up_error(settings.max_attempts)
    returned = shared.reclaim(
        settings.max_attempts, gave_up, own=True, caller_gone=caller_gone_error()
    )
    if returned:
        log.info("returned %d job(s) to the shared queue (ours, or leases expired)", returned)
    log.info("node %s on the shared queue (leases of %gs)", settings.node, settings.lease_seconds)
    queue = ClusterQueue(
        shared,
        partial(describe_stored, models, catalog),
        settings.max_attempts,
        gave_up,
        devices=lambda: [settings.device or "auto"],
    )
    providers.cluster = shared
    queue.remote = providers
    return queue


def webhook_status(state: AppState) -> RenderStatus:
    """A webhook's body: the generation's status object, links under the stored base."""
    ttl = state.settings.url_ttl_hours * 3600

    def render(row: dict[str, Any], base: str) -> dict[str, Any]:
        done = row["status"] == "completed"
        images = state.store.images_of([row["id"]])[row["id"]] if done else []
        links = views.Links(base, state.vault, ttl)
        return views.generation(row, images, links, state.queue, state.admission)

    return render
