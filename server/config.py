"""One Settings object from CLI flags, DARKROOM_* environment variables and defaults.

Precedence: a CLI flag beats the environment, which beats the default.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DARKROOM_"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # None means: SDXL base on CUDA, the tiny model elsewhere (decided when the pipeline loads).
    model: str | None = None
    data_dir: Path = Path("data")
    # postgresql://... for several nodes on one database; None: SQLite in the data dir.
    database_url: str | None = None
    # Several nodes on PostgreSQL: this node's name (default host:port) and how long a
    # claimed job stays this node's without a renewal (then another node takes it).
    node_id: str = ""
    lease_seconds: float = 30.0
    models_dir: Path = Path("models")
    # Base for the absolute URLs we hand out; None means the URL the request came in on.
    public_url: str | None = None
    device: str | None = None
    dtype: str | None = None
    # Render devices, one render process each: "cuda:0,cuda:1", "cpu,cpu", "none" (no local
    # rendering); None: every visible CUDA device, else one (pipelines/devices.py). A device
    # failing device_failures jobs in a row is out of service, retried after device_retry s.
    devices: str | None = None
    device_failures: int = 3
    device_retry: float = 10.0
    max_loras: int = 5
    lora_cache_size: int = 8
    url_ttl_hours: float = 24.0
    # Seconds: let the running job finish on SIGTERM; stop a job; fail one queued too long
    # (0 = never). A job the server died under is retried up to max_attempts times.
    drain_timeout: float = 30.0
    job_timeout: float = 600.0
    max_queue_age: float = 3600.0
    max_attempts: int = 3
    max_batch: int = 0  # queued jobs of one shape rendered together; 0: the device's default
    # The model library: models kept loaded (0: as many as fit in 85% of GPU memory on CUDA,
    # 1 elsewhere); seconds a job needing a model switch may be passed over by jobs for a
    # loaded model.
    models_loaded: int = 0
    switch_wait: float = 10.0
    render_process: bool = True  # render in a child process (else in a thread of this one)
    # The CUDA path (pipelines.tuning decides what applies on which device).
    compile: bool = False
    offload: bool = False
    vae_tiling_above: int = 0  # pixels; 0: the device's default
    warmup_sizes: str = "1024x1024"  # compiled graphs built before readiness, WxH,WxH
    cpu_threads: int = 0  # torch's threads; 0: all cores but one (left to the event loop)
    preview_every: int = 5  # steps between latent previews for event streams that ask
    log_level: str = "info"
    log_format: str = "text"
    # Accounts and limits. With no users, a loopback listener serves everyone as the local
    # user; elsewhere that needs insecure_no_auth.
    insecure_no_auth: bool = False
    # Open mode answers only requests addressed to this machine (Host and Origin loopback)
    # or to one of these names (comma-separated; ".example.com" its subdomains too, "*" any).
    allowed_hosts: str = ""
    # A bearer token /metrics asks for ("": /metrics is open, as Prometheus expects).
    metrics_token: str = field(default="", repr=False)
    max_active_per_user: int = 5
    poll_rate: float = 1.0  # status requests per second per generation, sustained
    poll_burst: float = 3.0
    max_queued: int = 1000  # pending generations, all users together (0: no bound)
    # Seconds an AUTOMATIC1111 txt2img beyond its user's active limit waits for a slot
    # (A1111 queues blocking calls) before its 429; 0: refuse at once.
    a1111_wait: float = 600.0
    max_body_bytes: int = 64 * 1024
    # Input images (img2img): each one's decoded size, on top of max_body_bytes; pixels.
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000
    # Webhooks: private/loopback receivers allowed (tests, LANs); seconds per attempt; the
    # retry schedule's scale (1: Standard Webhooks' 5 s ... 24 h; tests shrink it).
    webhook_allow_private: bool = False
    webhook_timeout: float = 10.0
    webhook_retry_scale: float = 1.0
    # Remote providers (server/providers/). fal: FAL_KEY (fal's own variable) enables it.
    fal_key: str = field(default="", repr=False)
    fal_url: str = "https://queue.fal.run"
    fal_app: str = "fal-ai/fast-sdxl"
    # Any server speaking AUTOMATIC1111's API; auth "user:password" (HTTP Basic).
    rundiffusion_url: str = ""
    rundiffusion_auth: str = field(default="", repr=False)
    # provider "auto": overflow to the first configured of overflow_to when the local wait
    # is estimated above overflow_after seconds (0: only when no local device is in service).
    overflow_after: float = 0.0
    overflow_to: str = "fal,rundiffusion"
    # Seconds between a remote job's status polls; per HTTP request; retries of a 429,
    # 502-504 or network error (backoff from remote_retry_base seconds, doubling).
    remote_poll: float = 1.0
    remote_timeout: float = 30.0
    remote_retries: int = 4
    remote_retry_base: float = 0.5

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from `overrides` (CLI flags; None values are unset) and the env."""
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = environ.get(ENV_PREFIX + f.name.upper()) or None
            if raw is not None:
                values[f.name] = _convert(f.name, raw, cls.__dataclass_fields__[f.name].default)
        if "fal_key" not in values and environ.get("FAL_KEY"):
            values["fal_key"] = environ["FAL_KEY"]
        return cls(**values)

    @property
    def warmup(self) -> list[tuple[int, int]]:
        sizes = []
        for size in filter(None, (part.strip() for part in self.warmup_sizes.split(","))):
            width, _, height = size.lower().partition("x")
            sizes.append((int(width), int(height or width)))
        return sizes

    @property
    def node(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "darkroom.sqlite3"

    @property
    def database(self) -> str | Path:
        """What the store opens: the database URL, else the data dir's SQLite file."""
        return self.database_url or self.database_path

    @property
    def vault_dir(self) -> Path:
        return self.data_dir / "vault"


def _convert(name: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid number") from None
    if isinstance(default, Path):
        return Path(raw)
    return raw
