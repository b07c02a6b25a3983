"""`load_test.py --nodes 2`: submits and status polls per second against one node and
spread over two nodes on one PostgreSQL database, and PostgreSQL against SQLite on one
node; every figure of a run comes from that run, so their ratios carry no drift between
runs. Each phase: K closed-loop connections (--closed-loop) for --closed-loop-seconds,
first submitting (open mode, no active or queue limits, so every submit is a 202 that
writes a job, its hold and a NOTIFY), then GETting a completed generation's status.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import httpx
import psycopg

from loadgen.procs import Process, start_darkroom

FLAGS = ("--poll-rate", "0", "--max-active-per-user", "0", "--max-queued", "0")


async def closed_loop(urls: list[str], body: dict | None, k: int, seconds: float) -> float:
    """Requests per second answered 2xx by k connections spread over `urls`."""
    done = 0
    stop = time.monotonic() + seconds

    async def loop(url: str) -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=30) as http:
            while time.monotonic() < stop:
                if body is None:
                    response = await http.get(url)
                else:
                    response = await http.post(url, json=body)
                done += response.status_code < 300

    started = time.monotonic()
    await asyncio.gather(*(loop(urls[i % len(urls)]) for i in range(k)))
    return done / (time.monotonic() - started)


def measure(nodes: list[Process], args: argparse.Namespace) -> dict[str, float]:
    body = {"prompt": "load", "settings": {"width": 256, "height": 256, "steps": 10}}
    first = httpx.post(f"{nodes[0].base}/image/generate", json=body, timeout=30).json()
    status = f"/generations/{first['request_id']}/status"
    deadline = time.monotonic() + 300
    while httpx.get(nodes[0].base + status).json()["status"] not in ("completed", "failed"):
        if time.monotonic() > deadline:
            raise SystemExit("the warm-up generation did not finish")
        time.sleep(0.2)
    k, seconds = args.closed_loop, args.closed_loop_seconds
    submits = asyncio.run(
        closed_loop([n.base + "/image/generate" for n in nodes], body, k, seconds)
    )
    polls = asyncio.run(closed_loop([n.base + status for n in nodes], None, k, seconds))
    return {"submits_per_s": round(submits, 1), "polls_per_s": round(polls, 1)}


def fresh_database(server: str) -> str:
    name = f"darkroom_load_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server + "postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server + name


def drop_database(url: str) -> None:
    server, _, name = url.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def nodes_phases(args: argparse.Namespace, scratch: Any, say: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    say("one node on SQLite")
    node = start_darkroom(args, scratch, "sqlite-1", *FLAGS)
    try:
        figures["sqlite_1_node"] = measure([node], args)
    finally:
        node.stop()
    for count in (1, args.nodes):
        url = fresh_database(args.postgres)
        say(f"{count} node(s) on PostgreSQL")
        started: list[Process] = []
        try:
            for i in range(count):
                flags = (*FLAGS, "--database", url, "--node-id", f"n{i}")
                started.append(start_darkroom(args, scratch, f"pg-{count}-{i}", *flags))
            figures[f"postgres_{count}_node"] = measure(started, args)
        finally:
            for node in started:
                node.stop()
            drop_database(url)
    one, many = figures["postgres_1_node"], figures[f"postgres_{args.nodes}_node"]
    lite = figures["sqlite_1_node"]
    figures["ratios"] = {
        f"{key}: {args.nodes} nodes / 1 node (postgres)": round(many[key] / one[key], 2)
        for key in one
    } | {f"{key}: postgres / sqlite (1 node)": round(one[key] / lite[key], 2) for key in one}
    return figures
