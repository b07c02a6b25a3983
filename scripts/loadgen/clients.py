"""The ChatEnhanced client simulation: submit, poll, fetch, as the contract's example client
does, plus the darkroom helpers the phases share (warm-up, queue depth, a feeder)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from .procs import auth
from .rawhttp import ClientError, Connection, Response

ACTIVE = ("pending", "processing")


@dataclass
class Recorder:
    """What the ChatEnhanced clients saw."""

    submit_busy_ms: list[float] = field(default_factory=list)
    submit_idle_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    fetch_ms: list[float] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    render_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    intended_429: Counter[str] = field(default_factory=Counter)
    submitted: int = 0
    completed: int = 0
    images: int = 0
    outstanding: int = 0


# ---------------------------------------------------------------- darkroom helpers


def generation_body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": "a lighthouse at dusk, oil painting",
        "settings": {"width": args.size, "height": args.size, "steps": args.steps, "seed": -1},
        "options": {"num_images": args.images, "format": args.format},
    }


def retry_after(response: httpx.Response | Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def error_code(response: httpx.Response | Response) -> str:
    """The contract's code from `{"status": "failed", "error": {"code": ...}}`."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(no code)"


async def warm_up(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """One generation to completion (the first render is slow); the submit answer."""
    submitted = (await http.post("/image/generate", json=body)).raise_for_status().json()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        response = await http.get(submitted["poll_url"])
        if response.status_code == 429:
            await asyncio.sleep(retry_after(response) or 1)
            continue
        status = response.raise_for_status().json()["status"]
        if status == "completed":
            return submitted
        if status == "failed":
            raise SystemExit(f"warm-up generation failed: {response.text}")
        await asyncio.sleep(0.2)
    raise SystemExit("warm-up generation did not finish in 600 s")


async def warm_up_once(base: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        await warm_up(http, body)


async def queue_depth(http: httpx.AsyncClient) -> int:
    return int((await http.get("/health")).json()["queue_depth"])


async def fill_queue(http: httpx.AsyncClient, body: dict[str, Any], depth: int) -> None:
    while await queue_depth(http) < depth:
        await http.post("/image/generate", json=body)


async def feed(
    http: httpx.AsyncClient, body: dict[str, Any], stop: asyncio.Event, depths: list[int]
) -> None:
    """Keep the worker rendering: a job or two queued behind the running one."""
    while not stop.is_set():
        depths.append(await queue_depth(http))
        if depths[-1] < 3:
            await http.post("/image/generate", json=body)  # a 429 (user limit) is fine here
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- ChatEnhanced clients


@dataclass
class Context:
    """The run's shared state; each simulated client gets a copy with its own `http`."""

    args: argparse.Namespace
    base: str
    body: dict[str, Any]
    deadline: float
    rec: Recorder = field(default_factory=Recorder)
    http: Connection | None = None


async def call(
    ctx: Context, kind: str, record: list[float], method: str, url: str, **kwargs: Any
) -> Response | None:
    """One request; a 429 with Retry-After is waited out and retried (intended), a 503 with
    Retry-After too (but it is an error). None: failed, or the run ended while waiting."""
    while True:
        started = time.perf_counter()
        try:
            assert ctx.http is not None
            request = ctx.http.request(method, url, **kwargs)
            response = await asyncio.wait_for(request, ctx.args.timeout)
        except (ClientError, asyncio.TimeoutError) as exc:
            ctx.http.close()
            ctx.rec.errors[f"{kind}: {type(exc).__name__}"] += 1
            return None
        record.append((time.perf_counter() - started) * 1000)
        wait = retry_after(response)
        if response.status_code == 429 and wait is not None:
            ctx.rec.intended_429[kind] += 1
        elif response.is_error:
            ctx.rec.errors[f"{kind}: {response.status_code} {error_code(response)}"] += 1
            if response.status_code != 503 or wait is None:
                return None
        else:
            return response
        await asyncio.sleep(min(wait, max(0.0, ctx.deadline - time.monotonic())))
        if time.monotonic() >= ctx.deadline:
            return None


async def one_generation(ctx: Context, headers: dict[str, str]) -> bool:
    """Submit, poll, fetch, as the contract's example client does. False on a failure."""
    rec = ctx.rec
    record = rec.submit_busy_ms if rec.outstanding > 0 else rec.submit_idle_ms
    url = ctx.base + "/image/generate"
    response = await call(ctx, "submit", record, "POST", url, json_body=ctx.body, headers=headers)
    if response is None:
        return False
    rec.submitted += 1
    rec.outstanding += 1
    submitted = time.monotonic()
    try:
        result = await poll(ctx, response.json(), headers)
    finally:
        rec.outstanding -= 1
    if result is None:
        return False
    rec.wait_s.append(time.monotonic() - submitted)
    rec.completed += 1
    return await fetch_images(ctx, result, headers)


async def poll(
    ctx: Context, result: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any] | None:
    """Poll at once, then every --poll-interval seconds, until completed or failed."""
    url = result["poll_url"]
    while result["status"] in ACTIVE:
        if time.monotonic() >= ctx.deadline:
            return None
        response = await call(ctx, "status", ctx.rec.status_ms, "GET", url, headers=headers)
        if response is None:
            return None
        result = response.json()
        if result["status"] in ACTIVE:
            await asyncio.sleep(ctx.args.poll_interval)
    if result["status"] != "completed":
        code = (result.get("error") or {}).get("code", "(no code)")
        ctx.rec.errors[f"generation {result['status']}: {code}"] += 1
        return None
    return result


async def fetch_images(ctx: Context, result: dict[str, Any], headers: dict[str, str]) -> bool:
    for image in result["images"]:
        ctx.rec.render_ms.append(image["metadata"]["generation_time"])
        response = await call(ctx, "fetch", ctx.rec.fetch_ms, "GET", image["url"], headers=headers)
        if response is None:
            return False
        ctx.rec.images += 1
    return True


async def client(ctx: Context, index: int, token: str | None) -> None:
    await asyncio.sleep(index * ctx.args.ramp / ctx.args.clients)
    headers = auth(token)
    ctx = replace(ctx, http=own_connection(ctx.base))
    try:
        while time.monotonic() < ctx.deadline:
            if not await one_generation(ctx, headers):
                await asyncio.sleep(ctx.args.poll_interval)  # no hot loop on an error
    finally:
        ctx.http.close()


async def probe(ctx: Context, headers: dict[str, str]) -> None:
    """GET /health/live every 100 ms: how quickly the event loop answers anything."""
    ctx = replace(ctx, http=own_connection(ctx.base))
    try:
        while time.monotonic() < ctx.deadline:
            url = ctx.base + "/health/live"
            await call(ctx, "probe", ctx.rec.probe_ms, "GET", url, headers=headers)
            await asyncio.sleep(0.1)
    finally:
        ctx.http.close()


async def own_lag(ctx: Context, interval: float = 0.01) -> None:
    """How late this load generator's own event loop wakes up: a latency it records can
    be that much more than the server's."""
    while time.monotonic() < ctx.deadline:
        started = time.perf_counter()
        await asyncio.sleep(interval)
        ctx.rec.lag_ms.append((time.perf_counter() - started - interval) * 1000)


def own_connection(base: str) -> Connection:
    """One keep-alive connection per simulated browser (rawhttp: httpx costs the server's
    CPUs several times more per request)."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return Connection(parts.hostname, parts.port)


async def chatenhanced(args: argparse.Namespace, base: str, tokens: list[str]) -> Context:
    ctx = Context(args, base, generation_body(args), time.monotonic() + args.duration)
    own = [tokens[i % len(tokens)] if tokens else None for i in range(args.clients)]
    watchers = [asyncio.create_task(probe(ctx, auth(own[0]))), asyncio.create_task(own_lag(ctx))]
    await asyncio.gather(*(client(ctx, i, token) for i, token in enumerate(own)))
    await asyncio.gather(*watchers)
    return ctx
