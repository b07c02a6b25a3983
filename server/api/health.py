"""Health probes: /health for people, /health/live and /health/ready for orchestrators.

With several devices (--devices), the server is ready while any device is in service;
each device is listed under `devices`. With --devices none (an API-only node) there is
nothing to render with, and readiness asks only for the database. No probe takes the
database's write lock, and /health and /health/ready read it off the event loop, so
/health/live answers at once even while another process holds that lock.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.offload import off_loop
from server.state import AppState, state_of


def readiness(state: AppState) -> dict[str, bool]:
    workers = state.devices.workers
    checks = {}
    if workers:
        checks = {
            "model_loaded": any(worker.state == "ready" for worker in workers),
            "worker_alive": any(worker.alive for worker in workers),
            "worker_responsive": any(worker.stuck_job is None for worker in workers),
            "device_in_service": state.devices.any_usable(),
        }
    return {
        **checks,
        "database_writable": state.store.writable(),
        "accepting_jobs": not state.draining,
    }


async def health(request: Request) -> Response:
    """Summary for people: 200 when ready, else 503 with what is wrong."""
    body, ready = await off_loop(summary, state_of(request))
    return JSONResponse(body, status_code=200 if ready else 503)


def summary(state: AppState) -> tuple[dict, bool]:
    pool, worker, checks = state.devices, state.worker, readiness(state)
    ready = all(checks.values())
    states = {pool.state_of(one) for one in pool.workers}
    if ready:
        status = "ok"
    elif state.draining:
        status = "draining"
    elif states and states <= {"loading", "failed"}:
        status = "loading" if "loading" in states else "failed"
    else:
        status = "degraded"
    body = {
        "status": status,
        "model": state.models.default_model if worker is None else worker.renderer.model,
        "device": ",".join(str(one.renderer.device) for one in pool.workers) or "none",
        "queue_depth": state.queue.depth(),
        "worker_alive": any(one.alive for one in pool.workers),
        "worker_restarts": pool.restarts,
        "checks": checks,
        "devices": pool.describe(),
        "node": state.settings.node,
    }
    nodes = getattr(state.queue, "nodes", None)
    if nodes is not None:
        body["nodes"] = nodes()
    errors = [one.load_error for one in pool.workers if one.load_error]
    if errors:
        body["error"] = errors[0]
    if state.providers is not None:
        local = {"state": status, "in_service": state.providers.local_in_service()}
        body["providers"] = state.providers.health(local)
    return body, ready


async def health_live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def health_ready(request: Request) -> Response:
    checks = await off_loop(readiness, state_of(request))
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
