"""Persistence: the database (the one owner of SQL) and the vault of image files.

`Store` is the database with every query module's methods; accounts.py and ledger.py run
in its transactions. vault.py keeps the image files the rows point to.
"""

from __future__ import annotations

from server.store.activity import ActivityQueries
from server.store.generations import GenerationQueries
from server.store.idempotency import IdempotencyQueries
from server.store.inputs import InputQueries
from server.store.keys import KeyQueries
from server.store.loras import LoraQueries
from server.store.models import ModelQueries
from server.store.presets import PresetQueries
from server.store.remote import RemoteQueries
from server.store.speed import SpeedQueries
from server.store.webhooks import WebhookQueries


class Store(
    GenerationQueries,
    LoraQueries,
    ModelQueries,
    PresetQueries,
    KeyQueries,
    WebhookQueries,
    RemoteQueries,
    IdempotencyQueries,
    ActivityQueries,
    InputQueries,
    SpeedQueries,
):
    """The database: open it with `Store(path or postgresql URL)`; it migrates itself."""
