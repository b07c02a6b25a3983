"""A real `darkroom serve` process for tests that need signals, restarts and real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, models_dir: Path, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "DARKROOM_PORT": str(self.port),
            "DARKROOM_DATA_DIR": str(data_dir),
            "HF_HUB_OFFLINE": "1",
            # Tests poll fast; the poll limit has tests of its own.
            "DARKROOM_POLL_RATE": "0",
        }
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "serve",
                    "--model",
                    "tiny",
                    "--models-dir",
                    str(models_dir),
                    *flags,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(self.log.read_text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def __enter__(self) -> ServerProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def add_user(data_dir: Path, name: str, *flags: str) -> str:
    """`darkroom users add NAME` on a data dir (also while its server runs): the token."""
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "users", "add", name, "--data-dir", str(data_dir),
         *flags],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.strip().splitlines()[-1]
