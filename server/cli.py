"""The `darkroom` command."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from server.config import Settings
from server.quiet import quiet_start_up
from server.startup import announce_when_ready, base_url

DATABASE_HELP = (
    "postgresql://user@host/db for nodes sharing one database (or DARKROOM_DATABASE_URL);"
    " default: SQLite in the data dir"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--model",
        help="'tiny', a hub id, a local diffusers folder or a single-file .safetensors "
        "(default: SDXL base on CUDA, tiny elsewhere)",
    )
    serve.add_argument("--data-dir", type=Path, help="database and vault (default ./data)")
    serve.add_argument("--database", dest="database_url", help=DATABASE_HELP)
    serve.add_argument(
        "--models-dir",
        type=Path,
        help="checkpoints/ and loras/, or A1111's Stable-diffusion/ and Lora/ (./models)",
    )
    serve.add_argument("--node-id", help="this node's name in a cluster (default host:port)")
    serve.add_argument(
        "--lease-seconds", type=float, help="a claimed job's lease on PostgreSQL (default 30)"
    )
    serve.add_argument("--public-url", help="base of the absolute URLs handed to clients")
    serve.add_argument("--device", choices=["cuda", "mps", "cpu"], help="default: auto")
    serve.add_argument(
        "--devices",
        help="render devices, one render process each: cuda:0,cuda:1 / cpu,cpu / none "
        "(default: every visible CUDA device, else one)",
    )
    serve.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: auto")
    serve.add_argument("--max-loras", type=int, help="LoRAs per request (default 5)")
    serve.add_argument("--drain-timeout", type=float, help="seconds to finish a job on SIGTERM")
    serve.add_argument("--job-timeout", type=float, help="seconds a job may render (default 600)")
    serve.add_argument("--max-queue-age", type=float, help="seconds a job may wait (0: forever)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["text", "json"], help="default text")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="with no users, serve everyone without a token even on a non-loopback address",
    )
    serve.add_argument(
        "--allowed-hosts",
        help="open mode: Host/Origin names besides localhost and loopback addresses that may"
        " use the server, comma-separated (.example.com: its subdomains too; *: any)",
    )
    serve.add_argument(
        "--metrics-token", help="a bearer token /metrics asks for (default: /metrics is open)"
    )
    serve.add_argument("--max-active-per-user", type=int, help="active generations (default 5)")
    serve.add_argument("--poll-rate", type=float, help="status polls/s per generation (1)")
    serve.add_argument("--max-queued", type=int, help="pending generations in all (1000)")
    serve.add_argument(
        "--a1111-wait", type=float,
        help="seconds an AUTOMATIC1111 txt2img over its user's active limit waits (600)",
    )  # fmt: skip
    serve.add_argument("--max-batch", type=int, help="same-shape jobs per batch (CUDA 4, else 1)")
    serve.add_argument(
        "--models-loaded",
        type=int,
        help="models kept loaded at once (default: as fit in 85%% of GPU memory; CPU 1)",
    )
    serve.add_argument(
        "--switch-wait",
        type=float,
        help="seconds a job needing a model switch may wait for loaded-model jobs (10)",
    )
    serve.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the UNet and VAE decoder at start-up (CUDA; slow to start)",
    )
    serve.add_argument(
        "--webhook-allow-private",
        action="store_true",
        default=None,
        help="let webhooks go to loopback, private and link-local addresses (tests, LANs)",
    )
    serve.add_argument(
        "--overflow-after",
        type=float,
        help="provider auto: send a job to a remote provider when its local wait is"
        " estimated above this many seconds (45 suits the contract's client; 0: off)",
    )
    serve.add_argument(
        "--overflow-to", help="remote providers auto overflows to, in order (fal,rundiffusion)"
    )
    serve.add_argument("--warmup-sizes", help="WxH,... compiled before ready (1024x1024)")
    serve.add_argument(
        "--offload", action="store_true", default=None, help="model CPU offload (small GPUs)"
    )

    users = commands.add_parser("users", help="manage users and their API tokens")
    user_commands = users.add_subparsers(dest="action", required=True)
    add = user_commands.add_parser("add", help="create a user and print their API token")
    add.add_argument("name")
    amount = add.add_mutually_exclusive_group()
    amount.add_argument("--credits", type=float, help="starting balance (default: unlimited)")
    amount.add_argument("--unlimited", action="store_true", help="no credit limit (default)")
    add.add_argument("--admin", action="store_true", help="may use the console's operator page")
    change = user_commands.add_parser("set", help="change a user's role or own limits")
    change.add_argument("name")
    change.add_argument(
        "--admin", action=argparse.BooleanOptionalAction, default=None,
        help="make the user an administrator (--no-admin: no longer)",
    )  # fmt: skip
    for sub, default in ((add, None), (change, argparse.SUPPRESS)):
        sub.add_argument(
            "--max-active", type=_limit(int), default=default, metavar="N",
            help="their active generations at once (0: no limit; 'default': the server's)",
        )  # fmt: skip
        sub.add_argument(
            "--poll-rate", type=_limit(float), default=default, metavar="R",
            help="their status polls/s per generation (0: no limit; 'default': the server's)",
        )  # fmt: skip
    user_commands.add_parser("list", help="users, credits, limits and usage")
    for action, text in (
        ("revoke", "revoke every token of a user"),
        ("token", "print a new token for a user (older ones stay valid)"),
        ("webhook-secret", "print the user's webhook signing secret (whsec_...)"),
    ):
        user_commands.add_parser(action, help=text).add_argument("name")
    credits = commands.add_parser("credits", help="manage credits")
    credit_commands = credits.add_subparsers(dest="action", required=True)
    grant = credit_commands.add_parser("add", help="add credits (negative: take away)")
    grant.add_argument("name")
    grant.add_argument("amount", type=float)
    for group in (user_commands, credit_commands):
        for sub in group.choices.values():
            sub.add_argument("--data-dir", type=Path, help="default ./data or DARKROOM_DATA_DIR")
            sub.add_argument("--database", help=DATABASE_HELP)

    db = commands.add_parser("db", help="migrate or copy the database")
    db_commands = db.add_subparsers(dest="action", required=True)
    migrate = db_commands.add_parser("migrate", help="bring the database to this version")
    migrate.add_argument("--data-dir", type=Path, help="default ./data or DARKROOM_DATA_DIR")
    migrate.add_argument("--database", help=DATABASE_HELP)
    copy = db_commands.add_parser(
        "copy", help="copy every row into a new, empty database (verified by counts, ledgers)"
    )
    copy.add_argument(
        "--from", dest="source", required=True, help="sqlite:PATH (a darkroom.sqlite3) or a URL"
    )
    copy.add_argument("--to", dest="target", required=True, help="postgresql://... (empty)")

    tiny = commands.add_parser(
        "tiny-model",
        help="write a tiny random SDXL-shaped model and LoRAs (a CPU's model library)",
        description="Write a tiny, randomly initialised SDXL-shaped model (seconds on a CPU)"
        " into the models folder's checkpoints/ (or AUTOMATIC1111's Stable-diffusion/) and"
        " N LoRAs for it into loras/ (or Lora/). Another --seed gives other weights, so"
        " another model: e.g. `--name tiny-b --seed 2` beside the default one.",
    )
    tiny.add_argument("--models-dir", type=Path, default=Path("models"), help="default ./models")
    tiny.add_argument("--loras", type=int, default=2, help="how many tiny LoRAs (default 2)")
    tiny.add_argument("--seed", type=int, help="weights' seed (default: the default model's)")
    tiny.add_argument("--name", help="folder or file name (default tiny-sdxl, or tiny-xl)")
    tiny.add_argument(
        "--single-file",
        action="store_true",
        help="one AUTOMATIC1111-style NAME.safetensors of SDXL's block layout at tiny widths,"
        " with tiny-xl-lora-N LoRAs that fit it",
    )
    try:  # generate, edit, batch, grid, reproduce: the client package's commands (client/)
        from darkroom_client.cli import add_commands
    except ImportError:
        pass
    else:
        add_commands(commands)
    return parser


def _limit(kind: type[int] | type[float]) -> Any:
    """A limit flag's value: a number, or 'default' (None: the server's flag applies)."""

    def parse(text: str) -> int | float | None:
        if text.strip().lower() == "default":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or 'default': {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tiny-model":
        return tiny_model(args)
    if args.command in ("generate", "edit", "batch", "grid", "reproduce", "wait-ready"):
        from darkroom_client.cli import run

        return run(args)
    if args.command == "db":
        from server.db_cli import run_db_command

        return run_db_command(args)
    if args.command in ("users", "credits"):
        from server.accounts_cli import run_account_command

        return run_account_command(args)
    return serve(vars(args))


def tiny_model(args: argparse.Namespace) -> int:
    from pipelines.tiny import build_tiny_model

    quiet_start_up()
    options: dict[str, Any] = {} if args.seed is None else {"seed": args.seed}
    if args.name:
        options["name"] = args.name
    started = time.perf_counter()
    if args.single_file:
        from pipelines.checkpoint_export import build_tiny_single_file

        path = build_tiny_single_file(args.models_dir, loras=args.loras, **options)
    else:
        path = build_tiny_model(args.models_dir, loras=args.loras, **options)
    print(f"wrote {path} and {args.loras} LoRA(s) in {time.perf_counter() - started:.1f}s")
    return 0


def serve(flags: dict) -> int:
    # Before torch loads: OpenMP threads that sleep rather than spin between parallel
    # regions leave the CPU to the event loop.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    quiet_start_up()
    from server.api.logs import configure_logging
    from server.app import create_app

    try:
        settings = Settings.load({k: v for k, v in flags.items() if k != "command"})
    except ValueError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 2
    refusal = exposure_refusal(settings)
    if refusal:
        print(f"darkroom: {refusal}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # `kill -USR1 <pid>` prints every thread's stack: what a stuck render is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    app = create_app(settings)
    # Our middleware logs each request (with its generation's id): no uvicorn access log.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
    )
    url = base_url(settings.host, settings.port, settings.public_url)
    DrainingServer(config, app, url).run()
    return 0


def exposure_refusal(settings: Settings) -> str | None:
    """Why the server must not start as configured: open to the network with no users."""
    from server.store import Store
    from server.store.accounts import Accounts, is_loopback

    if settings.insecure_no_auth or is_loopback(settings.host):
        return None
    store = Store(settings.database)
    try:
        if Accounts(store).has_users():
            return None
    finally:
        store.close()
    return (
        f"refusing to listen on {settings.host} with no users: anyone who can reach it could"
        " generate images and read every result. Create a user first"
        " (darkroom users add NAME), listen on 127.0.0.1, or pass --insecure-no-auth."
    )


class DrainingServer(uvicorn.Server):
    """On SIGTERM or SIGINT: refuse new generations, let the running job finish (up to
    the drain timeout) while status polls keep working, then shut down and exit 0.
    A second signal exits at once; the interrupted job stays queued."""

    def __init__(self, config: uvicorn.Config, app: Any, url: str) -> None:
        super().__init__(config)
        self.app = app
        self.url = url
        self.draining = False
        self._announce: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self._announce = asyncio.create_task(announce_when_ready(self.app, self.url))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self.app.state, "darkroom", None)
        if self.draining or state is None:
            self.should_exit = self.force_exit = True
            return
        self.draining = True
        threading.Thread(target=self._drain, args=(state,), daemon=True).start()

    def _drain(self, state: Any) -> None:
        state.drain()
        self.should_exit = True


if __name__ == "__main__":
    sys.exit(main())
