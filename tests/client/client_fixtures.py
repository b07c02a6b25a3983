"""Helpers for the client package's tests: a real `darkroom serve` with users, and the
client package importable from this checkout (it is a separate distribution)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "client"
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))

from processes import ServerProcess  # noqa: E402

SMALL = {"width": 256, "height": 256, "steps": 10}


@dataclass
class LiveServer:
    url: str
    tokens: dict[str, str]
    data_dir: Path
    process: ServerProcess

    def env(self, user: str = "alice") -> dict[str, str]:
        """The environment for a CLI subprocess: client importable, URL and token set."""
        path = os.pathsep.join(filter(None, [str(CLIENT_DIR), os.environ.get("PYTHONPATH")]))
        return {
            **os.environ,
            "PYTHONPATH": path,
            "DARKROOM_URL": self.url,
            "DARKROOM_TOKEN": self.tokens[user],
        }


def add_user(data_dir: Path, name: str, *flags: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "users",
            "add",
            name,
            *flags,
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return result.stdout.strip().splitlines()[-1]


def live_server(
    root: Path, models_dir: Path, users: dict[str, tuple[str, ...]], *flags: str
) -> Iterator[LiveServer]:
    data_dir = root / "data"
    tokens = {name: add_user(data_dir, name, *user_flags) for name, user_flags in users.items()}
    with ServerProcess(data_dir, models_dir, root / "server.log", *flags) as process:
        yield LiveServer(process.base, tokens, data_dir, process)


def darkroom(
    server: LiveServer, *args: str, user: str = "alice", module: str = "server.cli"
) -> subprocess.CompletedProcess[str]:
    """The `darkroom` command (or `module`) run as `user` against `server`."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=server.env(user),
        timeout=300,
    )
