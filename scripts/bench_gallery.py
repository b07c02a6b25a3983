"""The console's gallery with a long history, on SQLite and PostgreSQL, in one run.

    python scripts/bench_gallery.py                         # 10 000 generations, both engines
    python scripts/bench_gallery.py --generations 50000 --engines sqlite

Fills a fresh database with N completed generations of one user (one image each; their
thumbnails point at one small file), starts a real `darkroom serve --devices none` on it,
and times what the gallery's first page costs a browser: GET /generations/history with 50
items (unfiltered, and filtered by prompt text), then its 50 thumbnails. Prints the median
of several runs per engine and the goal (first page of 50 thumbnails under 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from processes import ServerProcess  # noqa: E402
from server.store import Store  # noqa: E402
from server.store.vault import thumbnail  # noqa: E402

POSTGRES = os.environ.get("DARKROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/")
WORDS = ("lighthouse", "harbour", "fox", "forest", "castle", "river", "desert", "city")


def fill(store: Store, vault_root: Path, count: int) -> None:
    thumb = "keep/aa/shared.thumb.webp"
    (vault_root / "keep/aa").mkdir(parents=True, exist_ok=True)
    (vault_root / thumb).write_bytes(thumbnail(Image.new("RGB", (256, 256), (90, 60, 200))))
    now = time.time() - count
    settings = {"width": 1024, "height": 1024, "steps": 30, "sampler": "euler",
                "cfg_scale": 7.5, "seed": 1, "negative_prompt": "", "model": None}  # fmt: skip
    request = {"settings": settings, "loras": [], "options": {"format": "jpeg", "num_images": 1}}
    with store.transaction() as db:
        for i in range(count):
            prompt = f"a {WORDS[i % len(WORDS)]} number {i}"
            cursor = db.execute(
                "INSERT INTO generations (request_id, status, prompt, request_json, seed,"
                " seed_fixed, work_units, user_id, cost, credits_used, created_at, started_at,"
                " finished_at, render_seconds) VALUES (?, 'completed', ?, ?, ?, 1, 31.5, 1,"
                " 1, 1, ?, ?, ?, 1.0) RETURNING id",
                (uuid.uuid4().hex, prompt, json.dumps({**request, "prompt": prompt}), i,
                 now + i, now + i, now + i + 1),
            )  # fmt: skip
            generation_id = cursor.fetchone()[0]
            db.execute(
                "INSERT INTO images (generation_id, idx, token, seed, width, height, format,"
                " file_name, thumb_name, in_vault, generation_time_ms, created_at)"
                " VALUES (?, 0, ?, ?, 1024, 1024, 'jpeg', ?, ?, 1, 1000, ?)",
                (generation_id, uuid.uuid4().hex, i, "keep/aa/missing.jpg", thumb, now + i + 1),
            )


def first_page(base: str, query: str) -> tuple[float, float]:
    """Seconds for the history page, and for it plus its thumbnails (fetched 6 at a time,
    as a browser does per host)."""
    with httpx.Client(base_url=base, limits=httpx.Limits(max_connections=6)) as client:
        start = time.perf_counter()
        page = client.get(f"/generations/history?per_page=50&page=1{query}").json()
        listed = time.perf_counter() - start
        urls = [item["images"][0]["thumbnail_url"] for item in page["items"]]
        assert len(urls) == 50, page
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(6) as pool:
            sizes = list(pool.map(lambda url: len(client.get(url).content), urls))
        assert all(sizes)
        return listed, time.perf_counter() - start


def measure(engine: str, count: int, runs: int, models_dir: Path, scratch: Path) -> dict:
    data = scratch / engine
    env_url = None
    if engine == "postgresql":
        import psycopg

        name = f"darkroom_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES + "postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        env_url = POSTGRES + name
    try:
        store = Store(env_url or data / "darkroom.sqlite3")
        start = time.perf_counter()
        fill(store, data / "vault", count)
        filled = time.perf_counter() - start
        store.close()
        if env_url:
            os.environ["DARKROOM_DATABASE_URL"] = env_url
        else:
            os.environ.pop("DARKROOM_DATABASE_URL", None)
        with ServerProcess(data, models_dir, scratch / f"{engine}.log", "--devices", "none") as s:
            first_page(s.base, "")  # warm: connections, caches
            plain = [first_page(s.base, "") for _ in range(runs)]
            filtered = [first_page(s.base, "&q=harbour") for _ in range(runs)]
        return {
            "engine": engine,
            "generations": count,
            "fill_seconds": round(filled, 1),
            "history_ms": round(statistics.median(p[0] for p in plain) * 1000, 1),
            "page_with_thumbnails_ms": round(statistics.median(p[1] for p in plain) * 1000, 1),
            "filtered_history_ms": round(statistics.median(p[0] for p in filtered) * 1000, 1),
            "filtered_page_ms": round(statistics.median(p[1] for p in filtered) * 1000, 1),
        }
    finally:
        if env_url:
            import psycopg

            with psycopg.connect(POSTGRES + "postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {env_url.rsplit('/', 1)[-1]} WITH (FORCE)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gallery-") as scratch:
        models_dir = Path(scratch) / "models"  # --devices none: the tiny model is not built
        models_dir.mkdir()
        for engine in args.engines.split(","):
            rows.append(measure(engine, args.generations, args.runs, models_dir, Path(scratch)))
    print(f"{'engine':<12}{'rows':>8}{'history ms':>12}{'page+thumbs ms':>16}"
          f"{'filtered ms':>13}{'filtered+thumbs ms':>20}")  # fmt: skip
    for row in rows:
        print(f"{row['engine']:<12}{row['generations']:>8}{row['history_ms']:>12}"
              f"{row['page_with_thumbnails_ms']:>16}{row['filtered_history_ms']:>13}"
              f"{row['filtered_page_ms']:>20}")  # fmt: skip
    print("goal: the first page of 50 thumbnails under 1000 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
