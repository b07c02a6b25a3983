"""The closed-loop client: K keep-alive connections (rawhttp), each sending its next GET as
soon as the answer is in."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .procs import HOST, CpuMeter, Process
from .rawhttp import ClientError, Connection
from .report import latency


@dataclass
class LoopStats:
    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def get_loop(
    port: int, path: str, headers: dict[str, str], deadline: float, stats: LoopStats
) -> None:
    """GET again as soon as the answer is in."""
    connection = Connection(HOST, port, headers)
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            response = await connection.request("GET", path)
        except ClientError as exc:
            stats.errors[str(exc).split(":")[0]] += 1
            await asyncio.sleep(0.01)
            continue
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        stats.codes[response.status_code] += 1
    connection.close()


async def closed_loop(
    port: int, path: str, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    stats = LoopStats()
    started = time.perf_counter()
    await asyncio.gather(
        *(get_loop(port, path, headers, started + seconds, stats) for _ in range(concurrency))
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
