"""The `qtask` command.

Client (`pip install qtask`):
- `qtask submit FILE.qasm... [--shots N] [--wait]`, `qtask status ID`, `qtask result ID`,
  `qtask cancel ID`, `qtask list [--status S]`: talk to a server at $QTASK_URL (`--json` for
  scripts).

Server (`pip install "qtask[server]"`):
- `qtask serve`: everything in one process tree (embedded mode, the default).
- `qtask api`, `qtask worker`, `qtask poller`: the roles of distributed mode (Redis + NATS).
- `qtask keygen NAME`: a new API key, and the entry that makes the service accept it.

Arguments and dispatch only: each server process is assembled in qtask.assembly.

Mesh (`pip install "qtask[server,mesh]"`, docs/mesh.md):
- `qtask node`: a service node of the mesh ([mesh.node] settings).
- `qtask coordinator [--migrate-to N]`: the mesh's coordinator: registry, job API, database.
- `qtask experiment [--smoke] [--seed N] [--out DIR]`: the mesh against a centralized baseline.
"""

# Light on purpose: a client-only install has no pydantic, FastAPI or Qiskit, so the server's
# modules (qtask.config included) are imported only inside the server commands.
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtask import __version__
from qtask.client.commands import add_commands, run
from qtask.errors import ConfigError, QTaskError

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from qtask.config import Settings

# Top-level modules of the `server` extra's distributions: missing one means a client-only install.
SERVER_MODULES = frozenset(
    {
        "fastapi",
        "nats",
        "obstore",
        "orjson",
        "prometheus_client",
        "pydantic",
        "pydantic_settings",
        "qiskit",
        "qiskit_aer",
        "qiskit_ibm_runtime",
        "qiskit_qasm3_import",
        "redis",
        "starlette",
        "structlog",
        "uvicorn",
    }
)
INSTALL_SERVER = "pip install 'qtask[server]'"
# Top-level modules of the `mesh` extra (py-libp2p on trio).
MESH_MODULES = frozenset({"libp2p", "trio", "multiaddr"})
INSTALL_MESH = "pip install 'qtask[server,mesh]'"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(
        prog="qtask", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"qtask {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API and workers in one process tree")
    _http_options(serve)
    serve.add_argument(
        "--data-dir", type=Path, help="where tasks are stored (default ./qtask-data)"
    )
    serve.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    api = commands.add_parser("api", help="distributed mode: the HTTP API")
    _http_options(api)
    worker = commands.add_parser("worker", help="distributed mode: run circuits from the queue")
    worker.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    worker.add_argument("--config", type=Path, help="a TOML settings file (or $QTASK_CONFIG)")
    poller = commands.add_parser(
        "poller", help="distributed mode: publish tasks the API could not; poll remote jobs"
    )
    poller.add_argument("--config", type=Path, help="a TOML settings file (or $QTASK_CONFIG)")
    node = commands.add_parser("node", help="mesh: a service node ([mesh.node] settings)")
    node.add_argument("--config", type=Path, help="a TOML settings file (or $QTASK_CONFIG)")
    coordinator = commands.add_parser(
        "coordinator", help="the mesh's coordinator: libp2p host, registry, job API (FR-009)"
    )
    _http_options(coordinator)
    coordinator.add_argument(
        "--migrate-to", type=int, metavar="N", help="move the database to schema version N, exit"
    )
    experiment = commands.add_parser(
        "experiment", help="mesh: compare distributed and centralized runs, write a report"
    )
    # Standard library only (a client-only install parses its options too).
    from qtask.mesh.experiment.options import add_arguments as add_experiment_arguments

    add_experiment_arguments(experiment)
    keygen = commands.add_parser("keygen", help="make an API key and its configuration entry")
    keygen.add_argument("name", help="whose key: the name its tasks belong to")
    add_commands(commands)
    args = parser.parse_args(argv)
    if getattr(args, "client_command", None) is not None:
        return run(args)
    try:
        return _server_command(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in MESH_MODULES:
            print(
                f"qtask: `qtask {args.command}` needs the mesh extra: {INSTALL_MESH}",
                file=sys.stderr,
            )
            return 2
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        print(
            f"qtask: `qtask {args.command}` is part of the server, which is not installed here "
            f"(no module {exc.name!r}): {INSTALL_SERVER}",
            file=sys.stderr,
        )
        return 2


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a role's main coroutine on uvloop where it is installed (uvicorn[standard] brings it;
    the API and `qtask serve`, worker loop included, already run on it through uvicorn): a
    distributed worker's own process spends ~10 % less CPU per task than on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not support
        asyncio.run(main)
        return
    uvloop.run(main)


def _server_command(args: argparse.Namespace) -> int:
    from qtask.config import load_settings

    if args.command == "keygen":
        return _keygen(args.name)
    if args.command == "experiment":
        from qtask.mesh.experiment.__main__ import run as run_experiment

        return run_experiment(args)
    try:
        settings = load_settings(args.config, **_overrides(args))
        _configure_logging(settings)
        if args.command == "serve":
            return _serve(settings)
        if args.command == "api":
            return _api(settings)
        if args.command == "worker":
            from qtask.assembly.roles import run_worker

            _run_loop(run_worker(settings))
            return 0
        if args.command == "node":
            from qtask.mesh.node import run_node

            asyncio.run(
                run_node(
                    settings.mesh.node,
                    health_host=settings.server.host,
                    wedged_exit_s=settings.supervision.wedged_exit_s,
                )
            )
            return 0
        if args.command == "coordinator":
            return _coordinator(settings, args.migrate_to)
        if args.command == "poller":
            from qtask.assembly.roles import run_poller

            _run_loop(run_poller(settings))
            return 0
    except ConfigError as exc:
        print(f"qtask: {exc}", file=sys.stderr)
        return 2
    except QTaskError as exc:
        print(f"qtask: {exc}", file=sys.stderr)
        return 1
    return 1


def _keygen(name: str) -> int:
    from qtask.api.auth import key_digest, new_key
    from qtask.config import ApiKey

    try:
        entry = ApiKey(name=name, sha256="0" * 64)
    except ValueError:
        print(f"qtask: {name!r} is not a key name (letters, digits, _ . @ -)", file=sys.stderr)
        return 2
    key = new_key()
    print(f"API key for {entry.name} (shown once; the service keeps only its hash):\n  {key}\n")
    print("Add to the TOML configuration (with [auth] enabled = true):")
    print(f'  [[auth.keys]]\n  name = "{entry.name}"\n  sha256 = "{key_digest(key)}"')
    return 0


def _http_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--config", type=Path, help="a TOML settings file (or $QTASK_CONFIG)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    server = {k: getattr(args, k, None) for k in ("host", "port")}
    if any(v is not None for v in server.values()):
        overrides["server"] = {k: v for k, v in server.items() if v is not None}
    if getattr(args, "data_dir", None) is not None:
        overrides["storage"] = {"data_dir": args.data_dir}
    if getattr(args, "workers", None) is not None:
        overrides["worker"] = {"processes": args.workers}
    return overrides


def _configure_logging(settings: Settings) -> None:
    from qtask import logs

    logs.configure(settings.log.level, settings.log.json_output)


def _serve(settings: Settings) -> int:
    from qtask.assembly.embedded import serve

    serve(settings)
    return 0


def _api(settings: Settings) -> int:
    from qtask.assembly.roles import serve_api

    serve_api(settings)
    return 0


def _coordinator(settings: Settings, migrate_to: int | None) -> int:
    from qtask.mesh import coordinator

    if migrate_to is not None:
        for step in coordinator.migrate_only(settings, migrate_to):
            print(step)
        return 0
    coordinator.run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
