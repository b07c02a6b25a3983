"""What the contract's example client does, from a shell: submit, poll once a second, download.

    python scripts/client.py "a lighthouse at dusk" --steps 20 --size 512 --images 2 --out out/

Uses only the standard library, so it runs anywhere the server is reachable. The server is
--url or DARKROOM_URL (default http://127.0.0.1:8000); with users on the server, pass a
token with --token or DARKROOM_TOKEN, as the darkroom command takes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def call(method: str, url: str, body: dict | None = None, token: str | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument(
        "--url",
        "--server",
        dest="server",
        default=os.environ.get("DARKROOM_URL", "http://127.0.0.1:8000"),
        help="the server (default: DARKROOM_URL, else http://127.0.0.1:8000)",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--seed", type=int, default=-1)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--format", default="png", choices=["jpeg", "png", "webp"])
    parser.add_argument("--lora", action="append", default=[], metavar="ID[:WEIGHT]")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--token", default=os.environ.get("DARKROOM_TOKEN"))
    args = parser.parse_args(argv)
    args.server = args.server.rstrip("/")

    loras = [
        {"id": int(i), "weight": float(w or 1.0)}
        for i, _, w in (spec.partition(":") for spec in args.lora)
    ]
    body = {
        "prompt": args.prompt,
        "settings": {
            "steps": args.steps,
            "width": args.size,
            "height": args.size,
            "cfg_scale": args.cfg,
            "sampler": args.sampler,
            "seed": args.seed,
        },
        "loras": loras,
        "options": {"num_images": args.images, "format": args.format},
    }
    result = call("POST", f"{args.server}/image/generate", body, args.token)
    deadline = time.monotonic() + args.timeout
    while result.get("status") in ("pending", "processing") and time.monotonic() < deadline:
        print(f"{result['status']}: about {result.get('estimated_time', '?')} s", file=sys.stderr)
        time.sleep(1)
        result = call("GET", result["poll_url"], token=args.token)
    if result.get("status") != "completed":
        print(json.dumps(result.get("error", result), indent=2), file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for image in result["images"]:
        meta = image["metadata"]
        path = args.out / f"{result['request_id']}-{meta['seed']}.{args.format}"
        urllib.request.urlretrieve(image["url"], path)
        print(f"{path}  seed {meta['seed']}  {meta['generation_time']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
