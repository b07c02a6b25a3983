"""README.md's quick start, run as written against a real server in a fresh data dir, so
the README cannot drift from the code. The blocks are read from the file; the test
substitutes only what a test must: the server's port (http://127.0.0.1:8000 becomes the
test server's URL), `make serve` (a ServerProcess with the same defaults) and
`. .venv/bin/activate` (a PATH on which `darkroom` runs this checkout)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from processes import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_URL = "http://127.0.0.1:8000"
ACTIVATE = ". .venv/bin/activate"


def quick_start_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def test_the_quick_start_blocks_are_short_and_in_order() -> None:
    blocks = quick_start_blocks()
    assert blocks[0].strip() == "make serve"
    assert blocks[1].splitlines()[:2] == [ACTIVATE, "darkroom wait-ready"]
    assert sum(len(block.splitlines()) for block in blocks) <= 14  # "about ten lines"


def test_the_readme_quick_start_runs_as_written(tmp_path: Path, models_dir: Path) -> None:
    blocks = quick_start_blocks()
    work = tmp_path / "work"
    work.mkdir()
    shims = tmp_path / "bin"
    shims.mkdir()
    darkroom = shims / "darkroom"
    darkroom.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m server.cli "$@"\n')
    darkroom.chmod(0o755)
    log = tmp_path / "server.log"
    # `make serve`: the server with its defaults, a fresh data dir, the built tiny model.
    server = ServerProcess(tmp_path / "data", models_dir, log)
    try:
        env = {
            **os.environ,
            "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")]),
        }
        env.pop("DARKROOM_URL", None)
        env.pop("DARKROOM_TOKEN", None)
        outputs = []
        for block in blocks[1:]:
            script = block.replace(DEFAULT_URL, server.base).replace(ACTIVATE, ":")
            # darkroom's own default URL is the README's; the test server is elsewhere.
            script = f"export DARKROOM_URL={server.base}\nset -e\n{script}"
            result = subprocess.run(
                ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                timeout=600,
            )  # fmt: skip
            assert result.returncode == 0, (block, result.stdout, result.stderr, log.read_text())
            outputs.append(result.stdout)

        # wait-ready waited for the model, then said so; the CLI's image and its sidecar.
        assert f"ready: {server.base} (model tiny)" in outputs[0]
        images = sorted((work / "out").glob("*-42.jpg"))
        assert len(images) == 1 and images[0].read_bytes()[:3] == b"\xff\xd8\xff"
        assert images[0].with_suffix(".json").is_file()
        assert images[0].name in outputs[0]  # `ls out/` shows where it landed
        # curl's image.
        assert (work / "fox.jpg").read_bytes()[:3] == b"\xff\xd8\xff"

        # The server said once, in one line, that it was ready and where; nothing known
        # to be harmless was printed on the way.
        deadline = time.monotonic() + 30
        ready = f"Darkroom ready on {server.base} (model tiny)"
        while ready not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert text.count("Darkroom ready on") == 1, text
        assert "torchvision" not in text and "Writing model shards" not in text, text
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)
