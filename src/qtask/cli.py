"""The `qtask` command: `qtask serve` runs the whole service in one process tree."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from qtask import __version__
from qtask.config import load_settings
from qtask.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="qtask", description=__doc__)
    parser.add_argument("--version", action="version", version=f"qtask {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API and workers in one process tree")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument(
        "--data-dir", type=Path, help="where tasks are stored (default ./qtask-data)"
    )
    serve.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    serve.add_argument("--config", type=Path, help="a TOML settings file (or $QTASK_CONFIG)")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
    except ConfigError as exc:
        print(f"qtask: {exc}", file=sys.stderr)
        return 2
    return 1


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host is not None or args.port is not None:
        overrides["server"] = {
            k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
        }
    if args.data_dir is not None:
        overrides["storage"] = {"data_dir": args.data_dir}
    if args.workers is not None:
        overrides["worker"] = {"processes": args.workers}
    settings = load_settings(args.config, **overrides)

    import uvicorn

    from qtask import logs
    from qtask.embedded import EmbeddedService, lock_data_dir

    logs.configure(settings.log.level, settings.log.json_output)
    lock = lock_data_dir(settings.storage.data_dir)
    service = EmbeddedService(settings)
    config = uvicorn.Config(
        service.app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.worker.shutdown_grace_s) + 1,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
    # that was installed before it. A no-op handler there makes a clean shutdown exit with 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
