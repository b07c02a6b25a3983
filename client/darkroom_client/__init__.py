"""Python client for a Darkroom image server (the ChatEnhanced image API contract).

from darkroom_client import Client
generation = Client().generate("a lighthouse at dusk", steps=20, size="512x512")
generation.save("out/")
"""

from darkroom_client.async_client import AsyncClient
from darkroom_client.bodies import build_request
from darkroom_client.client import Client
from darkroom_client.errors import (
    Cancelled,
    Conflict,
    DarkroomError,
    Expired,
    InternalError,
    InvalidLora,
    LimitExceeded,
    MethodNotAllowed,
    NotFound,
    ProviderError,
    QuotaExceeded,
    ServiceUnavailable,
    Timeout,
    TransportError,
    Unauthorized,
    ValidationError,
)
from darkroom_client.models import GeneratedImage, Generation

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "Conflict",
    "DarkroomError",
    "Expired",
    "GeneratedImage",
    "Generation",
    "InternalError",
    "InvalidLora",
    "LimitExceeded",
    "MethodNotAllowed",
    "NotFound",
    "ProviderError",
    "QuotaExceeded",
    "ServiceUnavailable",
    "Timeout",
    "TransportError",
    "Unauthorized",
    "ValidationError",
    "build_request",
]
__version__ = "0.1.0"
