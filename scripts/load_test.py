"""Load test: N ChatEnhanced-style clients against a real `darkroom serve`, beside a bare
Starlette endpoint on the same machine as the reference.

    .venv/bin/python scripts/load_test.py                    # 200 clients, 60 s, tiny model
    .venv/bin/python scripts/load_test.py --clients 5 --duration 10 --users 0 --out run.json

Phases, each with its own server process (all on this machine, all on 127.0.0.1):

1. bare: a one-route Starlette app under uvicorn (one process, default loop, access log on,
   as darkroom runs it); K closed-loop connections GET it as fast as it answers for
   --closed-loop-seconds.
2. closed loop on darkroom: `darkroom serve --poll-rate 0` (the per-generation poll limit
   off, or this would measure 429s); the same K loops GET a completed generation's status
   URL, first with the worker idle, then while it renders (a feeder keeps jobs queued).
3. ChatEnhanced load: `darkroom serve` as configured by default; --clients clients, started
   over --ramp seconds, each looping for --duration seconds: submit, poll the status at
   once and then every second until completed/failed, fetch the image URL(s). A 429 with
   Retry-After is waited out and retried (an intended 429). A probe GETs /health/live
   every 100 ms: its latency is the event loop's responsiveness.

--worker-nice and --torch-threads start darkroom through a launcher that sets them in the
worker thread before it loads the model, --switch-interval sets sys.setswitchinterval
(experiments on event-loop starvation, see scripts/README.md); --server-env sets
environment variables (OMP_NUM_THREADS=1, OMP_WAIT_POLICY=PASSIVE, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ACTIVE = ("pending", "processing")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_SUBMIT_P99_MS = 50.0
TARGET_STATUS_RATIO = 0.5

# `darkroom serve`, with the worker thread's nice value and torch threads set in that
# thread before it loads the model (torch's OpenMP pool is created by the first parallel op).
TUNED_SERVE = """
import os, sys, threading
from server import worker
from server.cli import main

switch = float(os.environ.get("LOADTEST_SWITCH_INTERVAL_MS") or 0)
if switch:
    sys.setswitchinterval(switch / 1000)

def tuned(run):
    def _run(self):
        nice = int(os.environ.get("LOADTEST_WORKER_NICE") or 0)
        threads = int(os.environ.get("LOADTEST_TORCH_THREADS") or 0)
        if nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        if threads:
            import torch
            torch.set_num_threads(threads)
        run(self)
    return _run

worker.Worker._run = tuned(worker.Worker._run)
sys.exit(main(sys.argv[1:]))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--clients", type=int, default=200, help="simulated ChatEnhanced clients")
    add("--users", type=int, help="users to create (default: one per client; 0: open mode)")
    add("--duration", type=float, default=60, help="seconds of ChatEnhanced load")
    add("--ramp", type=float, default=5, help="clients start spread over this many seconds")
    add("--size", type=int, default=256, help="width and height of each generation")
    add("--steps", type=int, default=10)
    add("--images", type=int, default=1, help="images per generation")
    add("--format", default="jpeg", choices=["jpeg", "png", "webp"])
    add("--poll-interval", type=float, default=1.0, help="seconds between status polls")
    add("--timeout", type=float, default=30, help="seconds before a request counts as failed")
    add("--closed-loop", type=int, default=64, metavar="K", help="closed-loop connections")
    add("--closed-loop-seconds", type=float, default=10)
    add("--skip-closed-loop", action="store_true", help="only the ChatEnhanced phase")
    add("--worker-nice", type=int, default=0, help="experiment: nice value of the worker thread")
    add("--torch-threads", type=int, default=0, help="experiment: torch intra-op threads")
    add("--switch-interval", type=float, default=0, help="experiment: GIL switch interval, ms")
    add("--server-env", action="append", default=[], metavar="KEY=VALUE")
    add("--models-dir", type=Path, help="reuse a models dir (default: build the tiny model)")
    add("--keep", action="store_true", help="keep the scratch dir (logs, databases)")
    add("--out", type=Path, help="write the figures as JSON here")
    add("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.users is None:
        args.users = args.clients
    return args


# ---------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": rounded(percentile(values, 50)),
        "p99_ms": rounded(percentile(values, 99)),
        "max_ms": rounded(max(values, default=None)),
    }


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Recorder:
    """What the ChatEnhanced clients saw."""

    submit_busy_ms: list[float] = field(default_factory=list)
    submit_idle_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    fetch_ms: list[float] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    render_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    intended_429: Counter[str] = field(default_factory=Counter)
    submitted: int = 0
    completed: int = 0
    images: int = 0
    outstanding: int = 0


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def darkroom_command(tuned: bool = False) -> list[str]:
    if tuned:
        return [sys.executable, "-c", TUNED_SERVE]
    exe = Path(sys.executable).with_name("darkroom")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


class Process:
    """A server subprocess with its log file; ready when `ready_path` answers 200."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        with log.open("a") as out:
            self.popen = subprocess.Popen(
                [arg.replace("{port}", str(self.port)) for arg in command],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, path: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.base + path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} not ready after {timeout:g} s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(Path(f"/proc/{self.popen.pid}/stat"))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)  # darkroom: a second one exits at once
            time.sleep(0.5)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def proc_cpu_seconds(stat_path: Path) -> float:
    fields = stat_fields(stat_path)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


class CpuMeter:
    """Cores used over a phase by the server, by this client and by everything else (other
    work on a shared machine skews the figures: the report shows how much there was)."""

    def __init__(self, server: Process) -> None:
        self.server = server
        self.start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        return (
            time.perf_counter(),
            self.server.cpu_seconds(),
            time.process_time(),
            machine_busy_seconds(),
        )

    def cores(self) -> dict[str, float]:
        wall, server, client, busy = (b - a for a, b in zip(self.start, self._now(), strict=True))
        return {
            "server_cores": round(server / wall, 2),
            "client_cores": round(client / wall, 2),
            "other_cores": round(max(0.0, busy - server - client) / wall, 2),
        }


def stat_fields(stat_path: Path) -> list[str]:
    """/proc/.../stat fields from field 3 (state) on: field n is at index n - 3."""
    text = stat_path.read_text()
    return text[text.rindex(")") + 2 :].split()


def thread_report(pid: int) -> dict[str, Any]:
    """Each thread's nice value and CPU time: do torch's OpenMP threads inherit the nice?"""
    threads = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = stat_fields(task / "stat")
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        threads.append({"tid": int(task.name), "nice": int(fields[16]), "cpu_s": round(cpu, 1)})
    threads.sort(key=lambda t: -t["cpu_s"])
    by_nice = Counter(t["nice"] for t in threads)
    return {"threads": len(threads), "by_nice": dict(by_nice), "busiest": threads[:5]}


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    env["LOADTEST_WORKER_NICE"] = str(args.worker_nice)
    env["LOADTEST_TORCH_THREADS"] = str(args.torch_threads)
    env["LOADTEST_SWITCH_INTERVAL_MS"] = str(args.switch_interval)
    return env


def start_darkroom(args: argparse.Namespace, scratch: Path, name: str, *flags: str) -> Process:
    tuned = bool(args.worker_nice or args.torch_threads or args.switch_interval)
    command = [
        *darkroom_command(tuned),
        "serve",
        "--model",
        "tiny",
        "--host",
        HOST,
        "--port",
        "{port}",
        "--data-dir",
        str(scratch / name),
        "--models-dir",
        str(args.models_dir),
        *flags,
    ]
    server = Process(name, command, server_env(args), scratch / f"{name}.log")
    try:
        server.wait_ready("/health")
    except BaseException:
        server.stop()
        raise
    return server


def build_models(args: argparse.Namespace, scratch: Path) -> None:
    if args.models_dir is not None:
        return
    args.models_dir = scratch / "models"
    run_checked([*darkroom_command(), "tiny-model", "--models-dir", str(args.models_dir)])


def run_checked(command: list[str]) -> str:
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def create_users(count: int, data_dir: Path) -> list[str]:
    """`darkroom users add NAME --unlimited`: the token is the last line of stdout."""
    if count == 0:
        return []
    probe = subprocess.run(
        [*darkroom_command(), "users", "--help"], cwd=REPO, capture_output=True, text=True
    )
    if probe.returncode != 0:
        raise SystemExit(
            "this darkroom has no `users` command (user accounts are not in yet): run with"
            f" --users 0 (open mode).\n{probe.stderr.strip()}"
        )

    def add(index: int) -> str:
        command = [*darkroom_command(), "users", "add", f"load-{index:04d}", "--unlimited"]
        lines = run_checked([*command, "--data-dir", str(data_dir)]).strip().splitlines()
        if not lines:
            raise SystemExit(f"{' '.join(command)} printed no token")
        return lines[-1].strip()

    # The first one alone: it creates the database (two at once may both migrate it).
    first = add(0)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [first, *pool.map(add, range(1, count))]


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# ---------------------------------------------------------------- the bare reference


def serve_bare(port: int) -> None:
    """The reference: one GET route with a small JSON dict, uvicorn as darkroom runs it."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"status": "completed", "request_id": "bare", "credits_used": 0})

    app = Starlette(routes=[Route("/bare", hello, methods=["GET"])])
    config = uvicorn.Config(app, host=HOST, port=port, log_level="info")
    uvicorn.Server(config).run()


# ---------------------------------------------------------------- closed loop


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


def bare_phase(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    say("bare Starlette endpoint: closed loop")
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "{port}"]
    bare = Process("bare", command, dict(os.environ), scratch / "bare.log")
    try:
        bare.wait_ready("/bare")
        return asyncio.run(measure_closed_loop(bare, "/bare", {}, args))
    finally:
        bare.stop()


def darkroom_closed_loop(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Idle and busy worker, against `--poll-rate 0` so that every GET is a real status."""
    tokens = create_users(min(args.users, 1), scratch / "closed-loop")
    say("darkroom --poll-rate 0: starting, one warm-up generation")
    server = start_darkroom(args, scratch, "closed-loop", "--poll-rate", "0")
    try:
        return asyncio.run(idle_and_busy(args, server, auth(tokens[0] if tokens else None)))
    finally:
        server.stop()


async def idle_and_busy(
    args: argparse.Namespace, server: Process, headers: dict[str, str]
) -> dict[str, Any]:
    body = generation_body(args)
    async with httpx.AsyncClient(base_url=server.base, headers=headers, timeout=60) as http:
        path = urlsplit((await warm_up(http, body))["poll_url"]).path
        say("darkroom status: closed loop, worker idle")
        idle = await measure_closed_loop(server, path, headers, args)
        await fill_queue(http, body, depth=2)
        stop, depths = asyncio.Event(), []
        feeder = asyncio.create_task(feed(http, body, stop, depths))
        say("darkroom status: closed loop, worker busy")
        busy = await measure_closed_loop(server, path, headers, args)
        stop.set()
        await feeder
    busy["min_queue_depth"] = min(depths, default=None)
    return {"idle": idle, "busy": busy, "server_threads": thread_report(server.popen.pid)}


# ---------------------------------------------------------------- darkroom helpers


def generation_body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": "a lighthouse at dusk, oil painting",
        "settings": {"width": args.size, "height": args.size, "steps": args.steps, "seed": -1},
        "options": {"num_images": args.images, "format": args.format},
    }


def retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def error_code(response: httpx.Response) -> str:
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
    http: httpx.AsyncClient | None = None


async def call(
    ctx: Context, kind: str, record: list[float], method: str, url: str, **kwargs: Any
) -> httpx.Response | None:
    """One request; a 429 with Retry-After is waited out and retried (intended), a 503 with
    Retry-After too (but it is an error). None: failed, or the run ended while waiting."""
    while True:
        started = time.perf_counter()
        try:
            assert ctx.http is not None
            response = await ctx.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
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
    response = await call(ctx, "submit", record, "POST", url, json=ctx.body, headers=headers)
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
    async with own_client(ctx.args) as http:
        ctx = replace(ctx, http=http)
        while time.monotonic() < ctx.deadline:
            if not await one_generation(ctx, headers):
                await asyncio.sleep(ctx.args.poll_interval)  # no hot loop on an error


async def probe(ctx: Context, headers: dict[str, str]) -> None:
    """GET /health/live every 100 ms: how quickly the event loop answers anything."""
    async with own_client(ctx.args) as http:
        ctx = replace(ctx, http=http)
        while time.monotonic() < ctx.deadline:
            url = ctx.base + "/health/live"
            await call(ctx, "probe", ctx.rec.probe_ms, "GET", url, headers=headers)
            await asyncio.sleep(0.1)


def own_client(args: argparse.Namespace) -> httpx.AsyncClient:
    """One httpx client (one connection) per simulated browser. Not one shared pool: with
    hundreds of connections httpcore spends ~10 ms of CPU per request scanning them, and
    the load generator shares this machine's CPUs with the server. verify=False and
    trust_env=False: plain http on loopback, and no CA bundle loaded per client."""
    return httpx.AsyncClient(timeout=args.timeout, verify=False, trust_env=False)


async def chatenhanced(args: argparse.Namespace, base: str, tokens: list[str]) -> Context:
    ctx = Context(args, base, generation_body(args), time.monotonic() + args.duration)
    own = [tokens[i % len(tokens)] if tokens else None for i in range(args.clients)]
    watcher = asyncio.create_task(probe(ctx, auth(own[0])))
    await asyncio.gather(*(client(ctx, i, token) for i, token in enumerate(own)))
    await watcher
    return ctx


def load_phase(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    say(f"creating {args.users} user(s)")
    tokens = create_users(args.users, scratch / "load")
    say("darkroom (default limits): starting, one warm-up generation")
    server = start_darkroom(args, scratch, "load")
    try:
        headers = auth(tokens[0] if tokens else None)
        asyncio.run(warm_up_once(server.base, generation_body(args), headers))
        say(f"ChatEnhanced load: {args.clients} clients for {args.duration:g} s")
        meter, wall = CpuMeter(server), time.perf_counter()
        ctx = asyncio.run(chatenhanced(args, server.base, tokens))
        figures = summarize_load(ctx.rec, time.perf_counter() - wall)
        figures.update(meter.cores(), server_threads=thread_report(server.popen.pid))
        return figures
    finally:
        server.stop()


async def warm_up_once(base: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        await warm_up(http, body)


def summarize_load(rec: Recorder, wall: float) -> dict[str, Any]:
    return {
        "seconds": round(wall, 1),
        "submit_busy": latency(rec.submit_busy_ms),
        "submit_all": latency(rec.submit_busy_ms + rec.submit_idle_ms),
        "status": latency(rec.status_ms),
        "status_polls_per_s": round(len(rec.status_ms) / wall, 1),
        "fetch": latency(rec.fetch_ms),
        "loop_probe": latency(rec.probe_ms),
        "generation_wait_s": {
            "p50": rounded(percentile(rec.wait_s, 50)),
            "max": rounded(max(rec.wait_s, default=None)),
        },
        "render_s_p50": rounded(percentile([ms / 1000 for ms in rec.render_ms], 50), 2),
        "submitted": rec.submitted,
        "completed": rec.completed,
        "images": rec.images,
        "images_per_minute": round(rec.images * 60 / wall, 1),
        "intended_429": dict(rec.intended_429),
        "intended_429_total": rec.intended_429.total(),
        "errors": dict(rec.errors),
    }


# ---------------------------------------------------------------- report


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    load, loop = figures["load"], figures.get("closed_loop")
    p99 = load["submit_busy"]["p99_ms"]
    rows = [
        row(
            "p99 submit latency, worker busy (ms)",
            p99,
            "<= 50",
            p99 is not None and p99 <= TARGET_SUBMIT_P99_MS,
        )
    ]
    errors = sum(load["errors"].values())
    if loop is not None:
        ratio = loop["busy"]["requests_per_s"] / max(loop["bare"]["requests_per_s"], 1e-9)
        loop["status_ratio"] = round(ratio, 3)
        rows.append(
            row(
                "status req/s, worker busy / bare",
                round(ratio, 3),
                ">= 0.50",
                ratio >= TARGET_STATUS_RATIO,
            )
        )
        errors += sum(closed_loop_errors(loop[k]) for k in ("bare", "idle", "busy"))
    rows.append(row("errors other than intended 429s", errors, "== 0", errors == 0))
    return rows


def row(name: str, value: Any, target: str, passed: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "target": target, "pass": passed}


def closed_loop_errors(result: dict[str, Any]) -> int:
    bad = sum(n for code, n in result["codes"].items() if int(code) >= 300)
    return bad + sum(result["errors"].values())


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_latency(figures: dict[str, Any]) -> str:
    keys = ("p50_ms", "p99_ms", "max_ms")
    parts = [f"{k[:-3]} {figures[k]:.1f} ms" for k in keys if figures[k] is not None]
    return f"n={figures['n']:<6} " + "  ".join(parts)


def print_closed_loop(loop: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"closed loop: {args.closed_loop} keep-alive connections, "
        f"{args.closed_loop_seconds:g} s each, next GET as soon as the answer is in"
    )
    for key, label in (
        ("bare", "bare Starlette endpoint"),
        ("idle", "darkroom status, idle"),
        ("busy", "darkroom status, busy"),
    ):
        r = loop[key]
        extra = f", errors {r['codes']} {r['errors']}" if closed_loop_errors(r) else ""
        print(
            f"  {label:<26} {r['requests_per_s']:>8.1f} req/s  p50 {r['p50_ms']} ms  "
            f"p99 {r['p99_ms']} ms  ({cores_line(r)}){extra}"
        )
    print(
        f"  status req/s busy / bare = {loop['status_ratio']:.3f}, idle / bare = "
        f"{loop['idle']['requests_per_s'] / max(loop['bare']['requests_per_s'], 1e-9):.3f}; "
        f"min queue depth while busy: {loop['busy']['min_queue_depth']}"
    )
    print(f"  server threads: {threads_line(loop['server_threads'])}")


def print_load(load: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"ChatEnhanced load: {args.clients} clients, {load['seconds']:g} s ({cores_line(load)})")
    print(f"  submit latency, worker busy  {fmt_latency(load['submit_busy'])}")
    print(f"  submit latency, all          {fmt_latency(load['submit_all'])}")
    print(
        f"  status latency               {fmt_latency(load['status'])}"
        f"  ({load['status_polls_per_s']:g} polls/s)"
    )
    print(f"  image fetch latency          {fmt_latency(load['fetch'])}")
    print(f"  /health/live every 100 ms    {fmt_latency(load['loop_probe'])}")
    wait = load["generation_wait_s"]
    print(
        f"  generations: {load['submitted']} submitted, {load['completed']} completed, "
        f"{load['images']} images = {load['images_per_minute']:g} images/min; "
        f"submit->completed p50 {wait['p50']} s, max {wait['max']} s; "
        f"render (server's generation_time) p50 {load['render_s_p50']} s"
    )
    print(f"  intended 429s: {load['intended_429_total']} {load['intended_429'] or ''}")
    errors = load["errors"]
    print("  errors: " + (", ".join(f"{k} x{n}" for k, n in errors.items()) or "none"))
    print(f"  server threads: {threads_line(load['server_threads'])}")


def cores_line(figures: dict[str, Any]) -> str:
    return (
        f"cores: server {figures['server_cores']}, client {figures['client_cores']},"
        f" other processes {figures['other_cores']}"
    )


def threads_line(report: dict[str, Any]) -> str:
    nice = ", ".join(f"nice {k}: {n}" for k, n in sorted(report["by_nice"].items()))
    busiest = ", ".join(f"{t['tid']} nice {t['nice']} {t['cpu_s']} s" for t in report["busiest"])
    return f"{report['threads']} ({nice}); busiest (tid, nice, cpu): {busiest}"


def print_report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    machine = figures["machine"]
    print(
        f"\n== darkroom load test: {args.size}x{args.size}, {args.steps} steps, "
        f"{args.images} image(s), {args.format}; users {args.users or 'none (open mode)'}"
    )
    print(
        f"   {machine['cpus']} CPUs, load average before {machine['loadavg_before']}; "
        f"tuning: {machine['tuning'] or 'none (server as is)'}"
    )
    if "closed_loop" in figures:
        print_closed_loop(figures["closed_loop"], args)
    print_load(figures["load"], args)
    print("targets:")
    for r in figures["targets"]:
        print(f"  {'PASS' if r['pass'] else 'FAIL'}  {r['name']:<40} {r['value']}  ({r['target']})")


def tuning(args: argparse.Namespace) -> str:
    parts = list(args.server_env)
    if args.worker_nice:
        parts.append(f"worker nice {args.worker_nice}")
    if args.torch_threads:
        parts.append(f"torch threads {args.torch_threads}")
    if args.switch_interval:
        parts.append(f"GIL switch interval {args.switch_interval:g} ms")
    return ", ".join(parts)


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": round(os.getloadavg()[0], 2),
            "tuning": tuning(args),
        },
    }
    say("building the tiny model" if args.models_dir is None else "using --models-dir")
    build_models(args, scratch)
    if not args.skip_closed_loop:
        bare = bare_phase(args, scratch)
        figures["closed_loop"] = {"bare": bare, **darkroom_closed_loop(args, scratch)}
    figures["load"] = load_phase(args, scratch)
    figures["targets"] = targets(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="darkroom-load-"))
    try:
        figures = run(args, scratch)
    finally:
        if args.keep:
            say(f"scratch dir kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print_report(figures, args)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
