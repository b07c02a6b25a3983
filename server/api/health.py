"""Health probes: /health for people, /health/live and /health/ready for orchestrators."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.state import AppState, state_of


def readiness(state: AppState) -> dict[str, bool]:
    worker = state.worker
    return {
        "model_loaded": worker.state == "ready",
        "worker_alive": worker.alive,
        "worker_responsive": worker.stuck_job is None,
        "database_writable": state.store.writable(),
        "accepting_jobs": not state.draining,
    }


async def health(request: Request) -> Response:
    """Summary for people: 200 when ready, else 503 with what is wrong."""
    state = state_of(request)
    worker, checks = state.worker, readiness(state)
    ready = all(checks.values())
    if ready:
        status = "ok"
    elif state.draining:
        status = "draining"
    elif worker.state in ("loading", "failed"):
        status = worker.state
    else:
        status = "degraded"
    body = {
        "status": status,
        "model": worker.renderer.model,
        "device": worker.renderer.device,
        "queue_depth": state.queue.depth(),
        "worker_alive": worker.alive,
        "worker_restarts": worker.restarts,
        "checks": checks,
        "node": state.settings.node,
    }
    nodes = getattr(state.queue, "nodes", None)
    if nodes is not None:
        body["nodes"] = nodes()
    if worker.load_error:
        body["error"] = worker.load_error
    return JSONResponse(body, status_code=200 if ready else 503)


async def health_live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def health_ready(request: Request) -> Response:
    checks = readiness(state_of(request))
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
