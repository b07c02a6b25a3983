"""A caller's running txt2img calls: /sdapi/v1/progress reports on them, /interrupt and
/skip stop them. Each caller sees and stops only their own.

A Darkroom job renders all its images in one denoising loop, so an interrupted txt2img has
no finished image to return: it answers 200 with `images: []` (as AUTOMATIC1111 does when
interrupted before its first image), and the generation ends as CANCELLED, uncharged.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.a1111.errors import a1111_route, caller
from server.api.offload import off_loop
from server.state import AppState, state_of


@dataclass
class Call:
    generation_id: int
    user_id: int
    started: float = field(default_factory=time.time)
    interrupted: bool = False

    @property
    def timestamp(self) -> str:
        return time.strftime("%Y%m%d%H%M%S", time.localtime(self.started))


class Calls:
    """The txt2img calls in flight, by user, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []

    def add(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def remove(self, call: Call) -> None:
        with self._lock:
            self._calls = [c for c in self._calls if c is not call]

    def of(self, user_id: int) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.user_id == user_id]


def calls_of(request: Request) -> Calls:
    app_state = request.app.state
    calls = getattr(app_state, "a1111_calls", None)
    if calls is None:
        calls = app_state.a1111_calls = Calls()
    return calls


def stop(state: AppState, call: Call) -> None:
    """Stop a call's generation as a cancel does: out of the queue, or stopped at its next
    step; failed CANCELLED now, so nothing it makes is recorded or charged."""
    call.interrupted = True
    state.cancel(call.generation_id)


def _queued(state: AppState, generation_id: int) -> tuple[tuple[int, float] | None, dict | None]:
    return state.queue.position(generation_id), state.store.generation_by_id(generation_id)


@a1111_route
async def interrupt(request: Request) -> Response:
    state, user = state_of(request), await caller(request)
    for call in calls_of(request).of(user.id):
        await off_loop(stop, state, call)
    return JSONResponse({})


@a1111_route
async def skip(request: Request) -> Response:
    """A1111 skips the current image and goes on with the next batch; Darkroom renders a
    call's images together, so skipping stops the call's running generation."""
    state, user = state_of(request), await caller(request)
    for call in calls_of(request).of(user.id):
        if state.queue.progress_of(call.generation_id) is not None:
            await off_loop(stop, state, call)
    return JSONResponse(None)


@a1111_route
async def progress(request: Request) -> Response:
    state, user = state_of(request), await caller(request)
    calls = calls_of(request).of(user.id)
    fraction, eta, step, steps = 0.0, 0.0, 0, 0
    current = calls[0] if calls else None
    if current is not None:
        job = state.queue.progress_of(current.generation_id)
        if job is not None:
            step, steps = job.step, job.total_steps
            fraction = step / steps if steps else 0.0
            eta = state.admission.estimate_seconds(job.work_units * (1 - fraction))
        else:
            place, row = await off_loop(_queued, state, current.generation_id)
            if place is not None and row is not None:
                eta = state.admission.estimate_seconds(place[1] + row["work_units"])
    body = {
        "progress": round(fraction, 4),
        "eta_relative": round(eta, 2),
        "state": {
            "skipped": False,
            "interrupted": bool(current and current.interrupted),
            "stopping_generation": False,
            "job": f"txt2img({current.generation_id})" if current else "",
            "job_count": len(calls),
            "job_timestamp": current.timestamp if current else "0",
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": None,
        "textinfo": None,
    }
    return JSONResponse(body)
