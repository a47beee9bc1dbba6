"""The ``serve`` and ``worker`` commands of the CLI (light: the service's modules load when a command runs)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_service_commands"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from search.service._app import read_token, serve

    token = read_token(args.token_file)  # never starts without one, on any host
    serve(
        args.storage,
        host=args.host,
        port=args.port,
        token=token,
        factories=args.factory,
        max_body=args.max_body,
        max_concurrent=args.max_concurrent,
        max_waiting=args.max_waiting,
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from search.service._worker import run_worker
    from storage import StudyStore

    ran = run_worker(
        StudyStore(args.storage),
        artifacts_dir=args.artifacts_dir,
        factories=args.factory,
        once=args.once,
        poll=args.poll,
    )
    print(f"worker: {ran} submission(s) run")
    return 0


def add_service_commands(sub: Any) -> None:
    """Register ``prunetune serve`` and ``prunetune worker`` on the CLI's subparsers."""
    factory = (
        "a package.module:factory model or data spec that submitted studies may name, or an hf:PATH model "
        "directory that submitted language-model studies may name (repeatable)"
    )
    srv = sub.add_parser(
        "serve",
        help="serve live report pages of every study and a token-guarded JSON API (pip install 'prunetune[serve]')",
        description="The token comes from $PRUNETUNE_TOKEN or --token-file; the server refuses to start without one.",
    )
    srv.add_argument("--storage", required=True, help="the study store's URL (created if new)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--token-file", help="a file holding the bearer token (default: $PRUNETUNE_TOKEN)")
    srv.add_argument("--factory", action="append", default=[], help=factory)
    srv.add_argument("--max-body", type=int, default=64 * 1024, help="largest request body in bytes (default 64 KiB)")
    srv.add_argument("--max-concurrent", type=int, default=8, help="requests served at once (default 8)")
    srv.add_argument(
        "--max-waiting", type=int, default=64, help="requests queued beyond those; more get 503 (default 64)"
    )
    srv.set_defaults(func=_cmd_serve)
    wrk = sub.add_parser("worker", help="run the studies submitted to `prunetune serve`, one after another")
    wrk.add_argument("--storage", required=True, help="the study store's URL (the server's)")
    wrk.add_argument("--artifacts-dir", default="artifacts", help="baselines and candidates' weights")
    wrk.add_argument("--factory", action="append", default=[], help=factory)
    wrk.add_argument("--once", action="store_true", help="stop when the queue is empty")
    wrk.add_argument("--poll", type=float, default=2.0, help="seconds between looks at an empty queue")
    wrk.set_defaults(func=_cmd_worker)
