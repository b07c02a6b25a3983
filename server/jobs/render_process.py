"""The renderer in a child process.

A render is mostly Python between kernels (all of it, on the tiny model), and in the
server's process that Python holds the GIL the event loop needs: while the worker
rendered, status requests ran at a third of a bare endpoint's rate and submits waited up
to 270 ms. In a child process the render holds its own GIL, runs at nice 10 so the server
and its clients come first, and a crash in native code ends only the child: the worker puts
the job it was rendering back in the queue, and starts a new child after a backoff
(server/jobs/device_health.py).

The parent sends one request at a time over a pipe and waits for its answer, relaying
steps and latents to the worker's callbacks and turning its stop flag into an event the
child's render checks between steps.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from PIL import Image

from pipelines.spec import (
    GenerationSpec,
    LatentsCallback,
    LoraCheck,
    ModelSpec,
    Renderer,
    StepCallback,
    StopCheck,
)
from server.quiet import quiet_start_up

log = logging.getLogger("darkroom.render")

POLL_SECONDS = 0.05
RENDER_NICENESS = 10  # the render process (and a render thread) yields the CPU to the server
# Several devices' workers load at once, and diffusers' lazy imports are not thread-safe.
_IMPORT_LOCK = threading.Lock()


class RenderProcessDied(RuntimeError):
    """The child process ended in the middle of a request."""


class ProcessRenderer:
    """A pipelines.spec.Renderer backed by `factory()` (a picklable callable that makes a
    pipelines.sdxl.SDXLRenderer, or anything with its methods) in a child process."""

    def __init__(self, factory: Callable[[], Renderer], model: str, latents_every: int = 0) -> None:
        self.factory = factory
        self.model = model
        self.device = "(loading)"
        self.latents_every = latents_every
        self.adapters = SimpleNamespace(hits=0, misses=0)  # the child's LoRA cache counts
        self.plan: Any = SimpleNamespace(max_batch=1)  # the child's, once loaded
        self.lora_fit: LoraCheck | None = None
        self._kill_reason: str | None = None
        self._memory: int | None = None
        self.loaded_models: list[str] = []  # as the child last reported them
        self._default_key: str | None = None
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._latents_wanted = self._context.Event()
        self._process: Any = None
        self._connection: Any = None
        self._ready = False
        self._lock = threading.RLock()  # one request on the pipe at a time

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child, which begins loading at once; load() waits for it."""
        with self._lock:
            if self._process is not None:
                return
            parent, child = self._context.Pipe()
            flags = Flags(self._stop, self._latents_wanted)
            process = self._context.Process(
                target=serve_child,
                args=(child, self.factory, flags, self.latents_every),
                name="darkroom-render",
                daemon=True,
            )
            process.start()
            child.close()
            self._process, self._connection, self._ready = process, parent, False

    def load(self) -> None:
        """Start the child if none lives and wait until its model is loaded."""
        with self._lock:
            if self._process is not None and not self._process.is_alive():
                self.close()
            self.start()
            if self._ready:
                return
            # The answer holds a LoraFit: import what it runs on while the child loads.
            from pipelines.lora_fit import import_dependencies

            with _IMPORT_LOCK:
                import_dependencies()

            info = self._wait(None, None, None)
            self.device, self.plan, self.lora_fit = info["device"], info["plan"], info["fit"]
            self._ready = True
            log.info("render process %d: %s on %s", self.pid, self.model, self.device)

    @property
    def lora_compatibility(self) -> LoraCheck | None:
        self.load()
        return self.lora_fit

    def render(
        self,
        spec: GenerationSpec,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[Image.Image]:
        return self.render_batch([spec], on_step, should_stop, on_latents)[0]

    def render_batch(
        self,
        specs: Sequence[GenerationSpec],
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[list[Image.Image]]:
        return self._call(("render_batch", list(specs)), on_step, should_stop, on_latents)

    def warmup(self, sizes: Any, images: Any = (1, 2)) -> None:
        self._call(("warmup", list(sizes), tuple(images)))

    def measure_speed(self, width: int = 512, height: int = 512, steps: int = 3) -> float | None:
        return self._call(("measure_speed", width, height, steps))

    def model_key(self, model: ModelSpec | None) -> str | None:
        """The key the child holds the default model under (for loaded_models)."""
        if model is not None:
            raise NotImplementedError("the child knows other models' keys")
        return self._default_key

    def free_memory(self) -> None:
        self._call(("free_memory",))

    def device_memory_bytes(self) -> int | None:
        return self._memory

    def kill(self, reason: str) -> bool:
        """Kill the child now (SIGKILL: a stopped or stuck one too), without waiting for the
        request on the pipe: that request fails with RenderProcessDied naming `reason`."""
        process = self._process
        if process is None or not process.is_alive():
            return False
        self._kill_reason = reason
        process.kill()
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to exit; kill it if it does not. A request still waiting on the
        child (a render that ignores its stop flag) then fails with RenderProcessDied."""
        locked = self._lock.acquire(timeout=timeout)
        try:
            process, connection = self._process, self._connection
            if process is None:
                return
            if locked:
                with contextlib.suppress(OSError, ValueError):
                    connection.send(("exit",))
                process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
            if locked:
                self._process = self._connection = None
                connection.close()
        finally:
            if locked:
                self._lock.release()

    def _call(
        self,
        request: tuple,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> Any:
        with self._lock:
            self.load()
            self._stop.clear()
            self._want_latents(on_latents)
            self._connection.send(request)
            return self._wait(on_step, should_stop, on_latents)

    def _want_latents(self, on_latents: Any) -> None:
        """Latents cross only while the worker's sink wants them (an event stream asked for
        previews): each is a copy off the device and a pickle through the pipe."""
        wanted = getattr(on_latents, "wanted", None)
        if on_latents is not None and (wanted is None or wanted()):
            self._latents_wanted.set()
        else:
            self._latents_wanted.clear()

    def _wait(
        self,
        on_step: StepCallback | None,
        should_stop: StopCheck | None,
        on_latents: LatentsCallback | None,
    ) -> Any:
        connection, process = self._connection, self._process
        while True:
            if should_stop is not None and not self._stop.is_set() and should_stop():
                self._stop.set()
            self._want_latents(on_latents)
            if not connection.poll(POLL_SECONDS):
                if not process.is_alive():
                    self._died(process)
                continue
            try:
                kind, *payload = connection.recv()
            except (EOFError, OSError):
                process.join(5)
                self._died(process)
            if kind == "step" and on_step is not None:
                on_step(*payload)
            elif kind == "latents" and on_latents is not None:
                on_latents(*payload)
            elif kind == "done":
                result, stats = payload
                self.adapters.hits, self.adapters.misses = stats["hits"], stats["misses"]
                self._memory = stats["memory"]
                self.loaded_models = stats["models"]
                self._default_key = stats["default_model"]
                return result
            elif kind == "error":
                raise payload[0]

    def _died(self, process: Any) -> None:
        code, killed, self._kill_reason = process.exitcode, self._kill_reason, None
        self._process = self._connection = None
        if killed:
            raise RenderProcessDied(f"the render process was killed ({killed})")
        raise RenderProcessDied(f"the render process exited (code {code})")


@dataclass(frozen=True)
class Flags:
    """What the parent flips while the child renders."""

    stop: Any  # multiprocessing Events
    latents_wanted: Any


def serve_child(
    connection: Any, factory: Callable[[], Renderer], flags: Flags, latents_every: int
) -> None:
    """The child's main loop: load, then answer requests until told to exit."""
    # The server decides when this process ends (Ctrl-C and SIGTERM reach the whole process
    # group): a drain lets the running render finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(RENDER_NICENESS)
    quiet_start_up()
    renderer = factory()
    try:
        renderer.load()
        info = {
            "device": renderer.device,
            "plan": SimpleNamespace(max_batch=renderer.plan.max_batch),
            "fit": renderer.lora_compatibility,
        }
    except BaseException as exc:
        connection.send(("error", portable(exc)))
        return
    connection.send(("done", info, stats(renderer)))
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        if request[0] == "exit":
            # Skip seconds of interpreter and torch teardown, but run multiprocessing's own
            # exit work first: it unregisters what the child created (tqdm's lock, made
            # even for a disabled progress bar), which the resource tracker would otherwise
            # report as leaked when the server exits.
            multiprocessing.util._exit_function()
            os._exit(0)
        try:
            result = answer(renderer, request, connection, flags, latents_every)
        except BaseException as exc:
            connection.send(("error", portable(exc)))
            continue
        connection.send(("done", result, stats(renderer)))


def stats(renderer: Renderer) -> dict[str, Any]:
    """What the parent shows in its metrics: LoRA cache counts and device memory."""
    return {
        "hits": renderer.adapters.hits,
        "misses": renderer.adapters.misses,
        "memory": renderer.device_memory_bytes(),
        "models": list(renderer.loaded_models),
        "default_model": renderer.model_key(None),
    }


def answer(
    renderer: Renderer, request: tuple, connection: Any, flags: Flags, latents_every: int
) -> Any:
    kind, *args = request
    if kind == "render_batch":

        def on_latents(step: int, latents: Any) -> None:
            if latents_every > 0 and step % latents_every == 0 and flags.latents_wanted.is_set():
                # As numpy: a tensor would cross as shared memory, with a socket per send.
                connection.send(("latents", step, latents.detach().float().cpu().numpy()))

        return renderer.render_batch(
            args[0],
            on_step=lambda step, total: connection.send(("step", step, total)),
            should_stop=flags.stop.is_set,
            on_latents=on_latents,
        )
    if kind == "warmup":
        return renderer.warmup(*args)
    if kind == "measure_speed":
        return renderer.measure_speed(*args)
    if kind == "free_memory":
        return renderer.free_memory()
    raise ValueError(f"unknown request {kind!r}")


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError that keeps its type's name and
    message (the worker matches out-of-memory errors by those)."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
