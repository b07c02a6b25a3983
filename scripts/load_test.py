"""Load test: N ChatEnhanced-style clients against a real `darkroom serve`, beside a bare
Starlette endpoint on the same machine as the reference.

    .venv/bin/python scripts/load_test.py                    # 200 clients, 60 s, tiny model
    .venv/bin/python scripts/load_test.py --clients 5 --duration 10 --users 0 --out run.json

Phases, each with its own server process (all on this machine, all on 127.0.0.1):

1. bare: a one-route Starlette app under uvicorn (one process, default loop, access log on,
   as darkroom runs it); K closed-loop connections GET it as fast as it answers for
   --closed-loop-seconds, before phase 2 and again after it (the reference is the mean:
   a shared machine's speed drifts over minutes).
2. closed loop on darkroom: `darkroom serve --poll-rate 0` (the per-generation poll limit
   off, or this would measure 429s); the same K loops GET a completed generation's status
   URL, first with the worker idle, then while it renders (a feeder keeps jobs queued).
3. ChatEnhanced load: `darkroom serve` as configured by default; --clients clients, started
   over --ramp seconds, each looping for --duration seconds: submit, poll the status at
   once and then every second until completed/failed, fetch the image URL(s). A 429 with
   Retry-After is waited out and retried (an intended 429). A probe GETs /health/live
   every 100 ms: its latency is the event loop's responsiveness. Each client holds one
   keep-alive connection of a lean HTTP client (loadgen/rawhttp.py), and the load
   generator reports its own event-loop lag, which every latency it records includes.

The server itself renders in a child process at nice 10, gives torch cores-1 threads and
sets OMP_WAIT_POLICY=PASSIVE; --server-env KEY=VALUE sets further environment variables
for the darkroom servers, --model another model (random-sdxl: SDXL's shapes, on CUDA),
--devices the render devices (`cpu,cpu`, `cuda:0,cuda:1`): the report's images/min is the
scaling figure.

The pieces live in scripts/loadgen/: procs (server processes, CPU meters, /proc thread
report, tiny model, users), rawhttp (the HTTP client), closed_loop (the closed-loop
client), clients (the ChatEnhanced simulation) and report (figures, targets, printing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:  # the loadgen package beside this script
    sys.path.insert(0, str(SCRIPTS))

from loadgen.clients import (  # noqa: E402
    chatenhanced,
    feed,
    fill_queue,
    generation_body,
    warm_up,
    warm_up_once,
)
from loadgen.closed_loop import measure_closed_loop  # noqa: E402
from loadgen.procs import (  # noqa: E402
    CpuMeter,
    Process,
    auth,
    build_models,
    create_users,
    serve_bare,
    start_darkroom,
    thread_report,
)
from loadgen.report import print_report, say, summarize_load, targets  # noqa: E402


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
    add("--server-env", action="append", default=[], metavar="KEY=VALUE")
    add("--model", default="tiny", help="the server's --model (random-sdxl: SDXL's shapes, CUDA)")
    add("--devices", help="the server's --devices (cpu,cpu: two render processes)")
    add("--models-dir", type=Path, help="reuse a models dir (default: build the tiny model)")
    add("--keep", action="store_true", help="keep the scratch dir (logs, databases)")
    add("--out", type=Path, help="write the figures as JSON here")
    add("--nodes", type=int, default=0, help="2: only the multi-node phases (loadgen/nodes.py)")
    add("--postgres", default="postgresql://postgres@127.0.0.1:5432/", help="for --nodes")
    add("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.users is None:
        args.users = args.clients
    return args


# ---------------------------------------------------------------- phases


def closed_loop_phases(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The bare endpoint before and after darkroom's: the machine's speed drifts by 10% or
    more over minutes (a shared VM here), so the reference is the mean of the two."""
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "{port}"]
    bare = Process("bare", command, dict(os.environ), scratch / "bare.log")
    try:
        bare.wait_ready("/bare")
        say("bare Starlette endpoint: closed loop")
        before = asyncio.run(measure_closed_loop(bare, "/bare", {}, args))
        darkroom = darkroom_closed_loop(args, scratch)
        say("bare Starlette endpoint: closed loop again")
        after = asyncio.run(measure_closed_loop(bare, "/bare", {}, args))
    finally:
        bare.stop()
    return {"bare": before, "bare_after": after, **darkroom}


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


# ---------------------------------------------------------------- main


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": round(os.getloadavg()[0], 2),
        },
    }
    say("building the tiny model" if args.models_dir is None else "using --models-dir")
    build_models(args, scratch)
    if args.nodes:
        from loadgen.nodes import nodes_phases

        figures["nodes"] = nodes_phases(args, scratch, say)
        return figures
    if not args.skip_closed_loop:
        figures["closed_loop"] = closed_loop_phases(args, scratch)
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
    if args.nodes:
        print(json.dumps(figures["nodes"], indent=2))
    else:
        print_report(figures, args)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
