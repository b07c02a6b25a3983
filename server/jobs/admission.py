"""Admission: a validated request becomes a persisted, queued job, or is refused (too many
active jobs, not enough credits, a full queue) with nothing recorded or held. Also the
time estimates that polls and Retry-After headers give."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from server.config import Settings
from server.contract import (
    MAX_IMAGES,
    MAX_SEED,
    PROVIDER_NAME,
    ApiError,
    ErrorCode,
    ImageGenerationRequest,
    check_lengths,
    check_limits,
    credits_for,
)
from server.jobs import image_jobs
from server.jobs.limits import UserLimits, retry_after
from server.jobs.queue import JobQueue
from server.jobs.specs import build_spec, model_key, queue_key, resolve_request
from server.library.checkpoints import ModelCatalog
from server.library.loras import LoraCatalog
from server.store import Store, ledger, webhooks
from server.store.accounts import User
from server.store.database import Connection
from server.store.vault import Vault

# Until a job has been measured and with no measurement from the renderer, assume roughly
# SDXL base on a modern GPU.
DEFAULT_SECONDS_PER_WORK_UNIT = 0.07
RATE_REFRESH_SECONDS = 1.0


def work_units(width: int, height: int, steps: float, num_images: int) -> float:
    """Megapixel-steps: what a render's duration is proportional to."""
    return width * height / 1e6 * steps * num_images



class Admission:
    """Turns a validated request into a persisted, queued job, or refuses it: too many
    active jobs, not enough credits, or a full queue. Nothing is recorded or held then."""

    def __init__(
        self,
        store: Store,
        catalog: LoraCatalog,
        models: ModelCatalog,
        queue: JobQueue,
        settings: Settings,
        vault: Vault,
        measured_speed: Callable[[], float | None] = lambda: None,
    ) -> None:
        """`measured_speed()`: seconds per work unit the loaded renderer measured on its
        device, the estimate until the first job has completed (None: not known yet)."""
        self.store = store
        self.catalog = catalog
        self.models = models
        self.queue = queue
        self.settings = settings
        self.vault = vault
        self.measured_speed = measured_speed
        # (read at, seconds per work unit overall, and by image size in pixels)
        self._rates: tuple[float, float, dict[int, float]] | None = None
        # server.providers.router.Providers, set by state.py (None: local rendering only).
        self.router: Any = None

    def submit(
        self,
        request: ImageGenerationRequest,
        user: User,
        extra: dict | None = None,
        webhook_base: str = "",
        bind: Callable[[Connection, str], None] | None = None,
        max_images: int = MAX_IMAGES,
        image_job: dict | None = None,
        blocking: bool = False,
    ) -> dict:
        """`extra`: keys stored beside the request (txt2img keeps what its client sent under
        `a1111`, for the infotext); the request itself is what renders. `webhook_base`: the
        base URL the status object's links are rendered under when `options.webhook_url`
        is delivered (the one the request arrived on). `bind(db, request_id)` runs in the
        transaction that admits the job (an Idempotency-Key is tied to it there) and may
        raise to refuse it. `max_images`: the bound on `num_images` of the API the request
        came through (OpenAI's `n` goes to 10). `image_job`: an image-to-image's part
        (server.jobs.image_jobs), stored beside the request; it renders here or on a remote
        provider that can render it (server.providers.router.choose).
        `blocking`: the caller waits on its connection to this node (a restart of the node
        cancels the job)."""
        image_job, files = image_jobs.split_pending(image_job)
        with self._inputs_removed_if_refused(files):
            options, settings = request.options, request.settings
            if options.provider != "auto" and self.router is None:
                raise ApiError(
                    ErrorCode.PROVIDER_ERROR,
                    f"Provider {options.provider!r} is not configured on this server",
                    {"provider": options.provider, "available": ["auto"]},
                )
            check_limits(
                request.loras, options.num_images, self.settings.max_loras, max_images
            )
            check_lengths(request.prompt, settings.negative_prompt, self.settings.max_prompt_chars)
            model, loras = resolve_request(self.models, self.catalog, request)
            self.models.check_use(model, *image_jobs.mask_and_hires(image_job))
            extra = {**(extra or {}), **({image_jobs.KEY: image_job} if image_job else {})}
            parts = image_jobs.image_parts(extra)
            provider = PROVIDER_NAME
            if self.router is not None:
                provider = self.router.choose(request, loras, self.local_wait, parts)
            # Stored by title (name and hash): the job renders that file, wherever it moves.
            settings.model = None if model.default else model.title
            seed_fixed = settings.seed != -1
            seed = settings.seed if seed_fixed else secrets.randbelow(MAX_SEED + 1)
            spec = build_spec(request, seed, loras, model, **parts)
            # The estimate also counts the VAE encodes of an image-to-image; the cost does not.
            steps_worked = spec.work_pixel_steps / (spec.width * spec.height)
            units = work_units(settings.width, settings.height, steps_worked, options.num_images)
            cost = credits_for(
                settings.width, settings.height, spec.base_steps_run, options.num_images
            )
            request_id = uuid.uuid4().hex

            def admit(db: Connection) -> None:
                self._check_user_limit(db, user)
                self._check_credits(db, user, cost)
                self._check_queue_bound(db)
                if bind is not None:
                    bind(db, request_id)
                if options.webhook_url:
                    webhooks.register(db, request_id, user.id, options.webhook_url, webhook_base)

            generation_id = self.store.insert_generation(
                request_id,
                request.prompt,
                {**request.model_dump(mode="json"), **extra},
                seed,
                seed_fixed,
                units,
                user.id,
                cost,
                admit,
                provider,
                self.settings.node if blocking else None,
            )
            # A deletion of another generation naming the same file may have removed it while
            # this one was being recorded (Vault.remove_inputs).
            self.vault.write_inputs(files)
            row = self.store.generation_by_id(generation_id)
            assert row is not None
            if self.router is None or not self.router.dispatch(row):
                self.queue.put(
                    generation_id,
                    units,
                    user.id,
                    queue_key(request, loras, model, parts),
                    model_key(model),
                )
            return row

    @contextmanager
    def _inputs_removed_if_refused(self, files: dict[str, bytes]) -> Iterator[None]:
        """A refused image job's input files go, unless another generation uses them."""
        try:
            yield
        except BaseException:
            self.vault.remove_inputs(files, self.store.named_inputs)
            raise

    def local_wait(self) -> float:
        """Seconds a job submitted now would wait for this server's own devices."""
        return self.estimate_seconds(self.queue.work_ahead_of_new_job())

    def _check_user_limit(self, db: Connection, user: User) -> None:
        limit = UserLimits.of(user, self.settings).max_active
        active = self.store.active_count(db, user.id)
        if limit > 0 and active >= limit:
            wait = self.estimate_seconds(self.queue.units_until_first_done(user.id))
            raise ApiError(
                ErrorCode.LIMIT_EXCEEDED,
                f"Too many active generations: {active} (at most {limit} per user);"
                " retry when one finishes",
                {"field": "concurrent_generations", "active": active, "limit": limit},
                429,
                {"Retry-After": retry_after(wait)},
            )

    def _check_credits(self, db: Connection, user: User, cost: float) -> None:
        if user.unlimited:
            return
        funds = ledger.balance(db, user.id)
        if cost > funds.available + 1e-9:
            raise ApiError(
                ErrorCode.QUOTA_EXCEEDED,
                f"Not enough credits: this generation costs {cost:g},"
                f" {max(funds.available, 0):g} available",
                {
                    "cost": cost,
                    "balance": round(funds.balance, 4),
                    "held": round(funds.held, 4),
                },
                402,
            )

    def _check_queue_bound(self, db: Connection) -> None:
        bound = self.settings.max_queued
        if bound > 0 and self.store.pending_count(db) >= bound:
            wait = self.estimate_seconds(self.queue.units_until_first_done(None))
            raise ApiError(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"The queue is full ({bound} generations waiting); try again shortly",
                {"reason": "queue_full", "limit": bound},
                503,
                {"Retry-After": retry_after(wait)},
            )

    def estimate_seconds(self, units: float, pixels: int | None = None) -> float:
        """Seconds to render `units` work units, at the speed measured for images of
        `pixels` pixels if there is one, else at the speed of recent jobs of any size."""
        # Every poll asks; the measured speeds are read from the database once a second.
        now = time.monotonic()
        if self._rates is None or now - self._rates[0] > RATE_REFRESH_SECONDS:
            overall = (
                self.store.seconds_per_work_unit()
                or self.measured_speed()
                or DEFAULT_SECONDS_PER_WORK_UNIT
            )
            self._rates = (now, overall, self.store.seconds_per_work_unit_by_size())
        _, overall, by_size = self._rates
        return units * by_size.get(pixels, overall)
