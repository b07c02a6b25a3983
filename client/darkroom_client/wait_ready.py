"""`darkroom wait-ready`: wait until the server answers /health with 200 (its model is
loaded), printing what it is doing meanwhile; for scripts and the README's quick start."""

from __future__ import annotations

import argparse
import sys
import time

import httpx

from darkroom_client.client import Client
from darkroom_client.commands import fail

DEFAULT_TIMEOUT = 600.0  # seconds wait-ready waits without --timeout


def cmd_wait_ready(args: argparse.Namespace, client: Client) -> int:
    limit = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    deadline = time.monotonic() + limit
    said = None
    while True:
        try:
            response = httpx.get(f"{client.url}/health", timeout=10)
            body = response.json()
            if response.status_code == 200:
                print(f"ready: {client.url} (model {body.get('model')})")
                return 0
            doing = f"{body.get('status', response.status_code)}"
        except (httpx.HTTPError, ValueError):
            doing = "not answering yet"
        if doing != said:
            print(f"waiting for {client.url}: {doing}", file=sys.stderr)
            said = doing
        if time.monotonic() >= deadline:
            return fail("TIMEOUT", f"{client.url} not ready after {limit:g} s ({doing})")
        time.sleep(0.5)
