"""The closed-loop client: K raw HTTP/1.1 keep-alive connections, each sending its next GET
as soon as the answer is in."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .procs import HOST, CpuMeter, Process
from .report import latency


@dataclass
class LoopStats:
    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """One HTTP/1.1 keep-alive GET: (status, connection stays open)."""
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection") != "close"


async def get_loop(port: int, request: bytes, deadline: float, stats: LoopStats) -> None:
    """GET again as soon as the answer is in (a lean raw client: httpx would be the
    bottleneck on a small machine, not the server)."""
    writer: asyncio.StreamWriter | None = None
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            status, keep = await exchange(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            stats.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
            continue
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        stats.codes[status] += 1
        if not keep:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def closed_loop(
    port: int, path: str, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    stats = LoopStats()
    started = time.perf_counter()
    await asyncio.gather(
        *(get_loop(port, request, started + seconds, stats) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    ok = sum(n for code, n in stats.codes.items() if code < 300)
    return {
        "requests_per_s": round(ok / elapsed, 1),
        "answered_per_s": round(stats.codes.total() / elapsed, 1),
        "codes": {str(code): n for code, n in sorted(stats.codes.items())},
        "errors": dict(stats.errors),
        **latency(stats.latencies_ms),
    }


async def measure_closed_loop(
    server: Process, path: str, headers: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    meter = CpuMeter(server)
    result = await closed_loop(
        server.port, path, headers, args.closed_loop, args.closed_loop_seconds
    )
    return {**result, **meter.cores()}
