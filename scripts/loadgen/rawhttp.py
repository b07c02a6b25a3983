"""A lean HTTP/1.1 client: one keep-alive connection, as a browser tab holds one.

The load generator shares the machine's CPUs with the server, so its own cost per request
is taken from the server and its event-loop lag is added to every latency it records.
httpx spent about 2.4 ms of CPU per request here (0.45 cores for 200 clients), and its
clients' latencies were several times what an independent probe saw; this client spends
a small fraction of that.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class ClientError(Exception):
    """The connection failed or closed mid-answer."""


@dataclass
class Response:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """Requests to one host:port over one connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.headers = {"Host": f"{host}:{port}", **(headers or {})}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Response:
        """`url`: a path, or an absolute URL on this host (a poll_url, an image url)."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = b"" if json_body is None else json.dumps(json_body).encode()
        fields = {**self.headers, **(headers or {})}
        if json_body is not None:
            fields["Content-Type"] = "application/json"
        if body or method in ("POST", "PUT"):
            fields["Content-Length"] = str(len(body))
        head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        request = f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode() + body
        try:
            return await self._exchange(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise ClientError(f"{type(exc).__name__}: {exc}") from None

    async def _exchange(self, request: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        writer.write(request)
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await read_chunked(reader)
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)
