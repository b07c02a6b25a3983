"""Server processes, CPU meters, the /proc thread report, the tiny model and users."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def darkroom_command() -> list[str]:
    """This checkout's server (processes run in REPO, which `-m` puts first on sys.path),
    not whatever `darkroom` the virtualenv installed (another worktree, perhaps)."""
    return [sys.executable, "-m", "server.cli"]


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
    """Each thread's nice value and CPU time (the server lowers its render thread's
    priority itself: the report shows which threads run at which nice)."""
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
    return env


def start_darkroom(args: argparse.Namespace, scratch: Path, name: str, *flags: str) -> Process:
    command = [
        *darkroom_command(),
        "serve",
        "--model",
        args.model,
        "--host",
        HOST,
        "--port",
        "{port}",
        "--data-dir",
        str(scratch / name),
        "--models-dir",
        str(args.models_dir),
        *(("--devices", args.devices) if getattr(args, "devices", None) else ()),
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
    if args.model != "tiny":
        return
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
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
        return [first, *pool.map(add, range(1, count))]


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


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
