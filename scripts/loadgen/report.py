"""Figures and the printed report: percentiles, summaries, the targets."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clients import Recorder

TARGET_SUBMIT_P99_MS = 50.0
TARGET_STATUS_RATIO = 0.5


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


def summarize_load(rec: Recorder, wall: float) -> dict[str, Any]:
    return {
        "seconds": round(wall, 1),
        "submit_busy": latency(rec.submit_busy_ms),
        "submit_all": latency(rec.submit_busy_ms + rec.submit_idle_ms),
        "status": latency(rec.status_ms),
        "status_polls_per_s": round(len(rec.status_ms) / wall, 1),
        "fetch": latency(rec.fetch_ms),
        "loop_probe": latency(rec.probe_ms),
        "client_lag": latency(rec.lag_ms),
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


# ---------------------------------------------------------------- targets


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
        ratio = loop["busy"]["requests_per_s"] / bare_reference(loop)
        loop["status_ratio"] = round(ratio, 3)
        rows.append(
            row(
                "status req/s, worker busy / bare",
                round(ratio, 3),
                ">= 0.50",
                ratio >= TARGET_STATUS_RATIO,
            )
        )
        errors += sum(closed_loop_errors(loop[k]) for k in CLOSED_LOOP_RUNS)
    rows.append(row("errors other than intended 429s", errors, "== 0", errors == 0))
    return rows


CLOSED_LOOP_RUNS = {
    "bare": "bare Starlette endpoint",
    "idle": "darkroom status, idle",
    "busy": "darkroom status, busy",
    "bare_after": "bare endpoint, again",
}


def bare_reference(loop: dict[str, Any]) -> float:
    """The bare endpoint's req/s: the mean of its runs before and after darkroom's."""
    runs = [loop[k]["requests_per_s"] for k in ("bare", "bare_after") if k in loop]
    return max(sum(runs) / len(runs), 1e-9)


def row(name: str, value: Any, target: str, passed: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "target": target, "pass": passed}


def closed_loop_errors(result: dict[str, Any]) -> int:
    bad = sum(n for code, n in result["codes"].items() if int(code) >= 300)
    return bad + sum(result["errors"].values())


# ---------------------------------------------------------------- printing


def fmt_latency(figures: dict[str, Any]) -> str:
    keys = ("p50_ms", "p99_ms", "max_ms")
    parts = [f"{k[:-3]} {figures[k]:.1f} ms" for k in keys if figures[k] is not None]
    return f"n={figures['n']:<6} " + "  ".join(parts)


def print_closed_loop(loop: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"closed loop: {args.closed_loop} keep-alive connections, "
        f"{args.closed_loop_seconds:g} s each, next GET as soon as the answer is in"
    )
    for key, label in CLOSED_LOOP_RUNS.items():
        r = loop[key]
        extra = f", errors {r['codes']} {r['errors']}" if closed_loop_errors(r) else ""
        print(
            f"  {label:<26} {r['requests_per_s']:>8.1f} req/s  p50 {r['p50_ms']} ms  "
            f"p99 {r['p99_ms']} ms  ({cores_line(r)}){extra}"
        )
    reference = bare_reference(loop)
    print(
        f"  bare reference (mean of its two runs) {reference:.1f} req/s; status req/s busy /"
        f" bare = {loop['status_ratio']:.3f}, idle / bare ="
        f" {loop['idle']['requests_per_s'] / reference:.3f};"
        f" min queue depth while busy: {loop['busy']['min_queue_depth']}"
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
    print(f"  load generator's own lag     {fmt_latency(load['client_lag'])}  (10 ms sleeps)")
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
    env = f"; server env: {', '.join(args.server_env)}" if args.server_env else ""
    env += f"; devices: {getattr(args, 'devices', None) or 'default'}"
    print(f"   {machine['cpus']} CPUs, load average before {machine['loadavg_before']}{env}")
    if "closed_loop" in figures:
        print_closed_loop(figures["closed_loop"], args)
    print_load(figures["load"], args)
    print("targets:")
    for r in figures["targets"]:
        print(f"  {'PASS' if r['pass'] else 'FAIL'}  {r['name']:<40} {r['value']}  ({r['target']})")
