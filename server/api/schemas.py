"""Response models beyond the contract's own, for the OpenAPI document: the additive
fields Darkroom sends, and the routes the contract does not describe. The handlers build
plain dicts (views.py); these models say what those dicts hold."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel

from server.contract import ErrorInfo, ImageGenerationResponse, LoraModel


class ErrorResponse(BaseModel):
    status: str = Field(description='Always "failed"')
    error: ErrorInfo


class GenerationStatus(ImageGenerationResponse):
    """The contract's ImageGenerationResponse plus progress fields."""

    queue_position: int | None = Field(None, description="Place among pending jobs")
    progress: float | None = Field(None, description="0-1 while processing")
    step: int | None = None
    total_steps: int | None = None
    message: str | None = Field(None, description="Cancelling a finished job says why not")
    preview: str | None = Field(
        None, description="Events with ?previews=true: a JPEG data URL of the latents"
    )
    preview_step: int | None = None


class WebhookDelivery(BaseModel):
    url: str
    state: str = Field(description="waiting, pending, delivered, failed or gave_up")
    attempts: int
    last_status: int | None
    next_attempt_at: str | None
    last_error: str | None


class GenerationDetail(GenerationStatus):
    webhook: WebhookDelivery | None = Field(None, description="null without options.webhook_url")


class HistoryItem(GenerationStatus):
    prompt: str
    settings: dict[str, Any]
    loras: list[dict[str, Any]]
    options: dict[str, Any]
    has_seed: bool
    created_at: str | None
    completed_at: str | None


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    itemsReceived: int
    curPage: int
    nextPage: int | None
    prevPage: int | None
    offset: int
    perPage: int
    itemsTotal: int
    pageTotal: int


class LoraEntry(LoraModel):
    activation_text: str
    preferred_weight: float | None
    notes: str
    base_model: str | None
    rank: int | None
    alpha: float | None
    format: str | None
    file: str
    duplicates: list[str]
    compatible: bool
    incompatible_reason: str | None
    warnings: list[str]


class RefreshSummary(BaseModel):
    files: int
    loras: int
    compatible: int
    added: list[int]
    removed: list[int]
    incompatible: list[dict[str, Any]]


class Preset(BaseModel):
    id: int
    name: str
    settings: dict[str, Any]
    loras: list[dict[str, Any]]
    tags: list[str]
    created_at: str | None
    updated_at: str | None


class Credits(BaseModel):
    unlimited: bool
    balance: float | None
    held: float
    available: float | None


class Account(BaseModel):
    user: str
    open_mode: bool
    credits: Credits
    active_generations: int
    limits: dict[str, float]
    webhook_secret: str | None = Field(None, description="signs webhooks (Standard Webhooks)")


class Health(BaseModel):
    status: str
    model: str
    device: str
    queue_depth: int
    worker_alive: bool
    worker_restarts: int
    checks: dict[str, bool]
    error: str | None = None
    node: str = Field(description="this node's id (--node-id, default host:port)")
    nodes: list[dict] | None = Field(
        None, description="on PostgreSQL: every node of the cluster and its last heartbeat"
    )


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]


class Liveness(BaseModel):
    status: str


class Deleted(BaseModel):
    """An ended generation, deleted: its images' files are gone, its charge stays."""

    request_id: str
    status: Literal["deleted"]


class DeleteResult(RootModel[GenerationStatus | Deleted]):
    """DELETE /generations/{id}: an active generation's final status (cancelled), or an
    ended one deleted."""


class Sampler(BaseModel):
    id: str = Field(description="What settings.sampler takes")
    sampler: str = Field(description="AUTOMATIC1111's name of the sampler")
    schedule: str = Field(description="AUTOMATIC1111's name of its schedule")


class Samplers(BaseModel):
    samplers: list[Sampler]


class AdminQueue(BaseModel):
    items: list[dict[str, Any]] = Field(
        description="Status objects, each with `user`, `prompt` and `node`"
    )


class AdminCancel(BaseModel):
    request_id: str
    cancelled: bool


class AdminUser(BaseModel):
    name: str
    admin: bool
    builtin: bool
    credits: dict[str, Any]
    charged: float
    tokens: int
    generations: int
    active: int


class AdminUsers(BaseModel):
    items: list[AdminUser]


class AdminNewUser(BaseModel):
    name: str
    admin: bool
    token: str = Field(description="Shown once")


class AdminCredits(BaseModel):
    name: str
    credits: dict[str, Any]


class AdminRevoked(BaseModel):
    name: str
    revoked: int


class DeviceSpeed(BaseModel):
    device: str
    model: str
    images: int
    seconds_per_image: float


class Activity(BaseModel):
    minutes: list[int] = Field(description="Each minute's start (Unix seconds)")
    images: list[int] = Field(description="Images finished in each minute")
    queue_depth: list[int] = Field(description="Jobs waiting at each minute's end")
    render_seconds: list[DeviceSpeed]

