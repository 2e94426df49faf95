"""The command line's client commands: `qtask submit|status|result|cancel|list|backends`.

Tables, bars and progress come from rich on a terminal; `--json` prints one JSON document on
stdout for scripts. Errors go to stderr as `qtask: ...` with exit code 1 (2 for bad usage).
Only the client and rich are imported here, so these commands work on a client-only install.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.bar import Bar
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qtask.client.errors import ClientError, InvalidCircuitError
from qtask.client.models import TaskResult
from qtask.client.sync import Client

# Shots of a result's per-shot memory a table shows (--json gives them all).
MEMORY_SHOWN = 16

CommandFn = Callable[[argparse.Namespace, Client, Console], int]


def add_commands(commands: Any) -> None:
    """Add the client commands to the `qtask` command's subparsers."""
    submit = commands.add_parser(
        "submit", help="submit OpenQASM files (several, or a directory: one batch)"
    )
    submit.add_argument("paths", nargs="+", type=Path, help="circuit files or directories")
    submit.add_argument("--shots", type=int, help="samples per circuit (server default 1024)")
    submit.add_argument("--seed", type=int, help="simulator seed, for reproducible counts")
    submit.add_argument("--backend", help="the backend to run on (see `qtask backends`)")
    submit.add_argument("--memory", action="store_true", help="also return each shot's bitstring")
    submit.add_argument("--wait", action="store_true", help="wait for the results")
    submit.add_argument("--timeout", type=float, help="with --wait: give up after S seconds")
    _common(submit, _submit)
    status = commands.add_parser("status", help="the state of tasks")
    status.add_argument("ids", nargs="+", help="task ids")
    _common(status, _status)
    result = commands.add_parser("result", help="a task's counts and histogram")
    result.add_argument("id", help="task id")
    result.add_argument("--wait", action="store_true", help="wait until the task ends")
    result.add_argument("--timeout", type=float, help="with --wait: give up after S seconds")
    _common(result, _result)
    cancel = commands.add_parser("cancel", help="cancel a queued or running task")
    cancel.add_argument("id", help="task id")
    _common(cancel, _cancel)
    listing = commands.add_parser("list", help="your tasks, newest first")
    listing.add_argument(
        "--status",
        action="append",
        choices=["pending", "completed", "error"],
        help="only tasks in this state (repeat for several)",
    )
    listing.add_argument("--limit", type=int, default=20, help="tasks to show (default 20)")
    listing.add_argument("--cursor", help="continue after a listing (its next_cursor)")
    _common(listing, _list)
    backends = commands.add_parser("backends", help="the backends a submission may name")
    _common(backends, _backends)


def _common(parser: argparse.ArgumentParser, run: CommandFn) -> None:
    parser.add_argument("--url", help="the server (default $QTASK_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default $QTASK_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(client_command=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen client command; the exit code."""
    console = Console()
    command: CommandFn = args.client_command
    try:
        with Client(args.url, api_key=args.api_key) as client:
            return command(args, client, console)
    except ClientError as exc:
        print(f"qtask: {exc.message}", file=sys.stderr)
        return 1


def _submit(args: argparse.Namespace, client: Client, console: Console) -> int:
    files = _circuit_files(args.paths)
    if not files:
        print("qtask: no .qasm files found", file=sys.stderr)
        return 2
    sources = [path.read_text() for path in files]
    shots, seed, backend, memory = args.shots, args.seed, args.backend, args.memory
    try:
        if len(files) == 1:
            ids = [
                client.submit(sources[0], shots=shots, seed=seed, backend=backend, memory=memory)
            ]
        else:
            ids = client.submit_many(
                sources, shots=shots, seed=seed, backend=backend, memory=memory
            )
    except InvalidCircuitError as exc:
        if exc.index is not None:  # name the file, not the batch position
            exc.message = f"{files[exc.index]}: {exc.message.split(': ', 1)[1]}"
        elif len(files) == 1:
            exc.message = f"{files[0]}: {exc.message}"
        raise
    if not args.wait:
        if args.json:
            _print_json([{"file": str(f), "task_id": i} for f, i in zip(files, ids, strict=True)])
        else:
            table = Table("file", "task id")
            for path, task_id in zip(files, ids, strict=True):
                table.add_row(str(path), task_id)
            console.print(table)
        return 0
    results = _wait(client, ids, args.timeout, console, show=not args.json and len(ids) > 1)
    if args.json:
        _print_json([{"file": str(f), **_as_dict(r)} for f, r in zip(files, results, strict=True)])
    elif len(results) == 1:
        _show_result(console, results[0])
    else:
        _status_table(console, results, files)
    return 0 if all(r.ok for r in results) else 1


def _status(args: argparse.Namespace, client: Client, console: Console) -> int:
    results = [client.get(args.ids[0])] if len(args.ids) == 1 else client.get_many(args.ids)
    if args.json:
        _print_json([_as_dict(r) for r in results] if len(results) > 1 else _as_dict(results[0]))
    else:
        _status_table(console, results)
    return 0


def _result(args: argparse.Namespace, client: Client, console: Console) -> int:
    if args.wait:
        result = _wait(client, [args.id], args.timeout, console, show=False)[0]
    else:
        result = client.get(args.id)
    if args.json:
        _print_json(_as_dict(result))
    else:
        _show_result(console, result)
    return 0 if result.ok else 1


def _cancel(args: argparse.Namespace, client: Client, console: Console) -> int:
    result = client.cancel(args.id)
    if args.json:
        _print_json(_as_dict(result))
    else:
        console.print(f"{result.id}: cancelled ({result.error})")
    return 0


def _list(args: argparse.Namespace, client: Client, console: Console) -> int:
    page = client.list(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(
            {
                "tasks": [{**_as_dict(r), "created_at": r.created_at} for r in page.tasks],
                "next_cursor": page.next_cursor,
            }
        )
        return 0
    table = Table("submitted", "task id", "status", "detail")
    for result in page.tasks:
        when = "" if result.created_at is None else _when(result.created_at)
        table.add_row(when, result.id, _styled(result), _detail(result))
    console.print(table)
    if page.next_cursor is not None:
        console.print(f"more: qtask list --cursor {page.next_cursor}")
    return 0


def _backends(args: argparse.Namespace, client: Client, console: Console) -> int:
    found = client.backends()
    if args.json:
        default = next((b.name for b in found if b.default), None)
        _print_json({"default": default, "backends": [dataclasses.asdict(b) for b in found]})
        return 0
    table = Table("name", "kind", "qubits", "noise", "health")
    table.columns[2].justify = "right"
    for backend in found:
        name = f"{backend.name} [dim](default)[/]" if backend.default else backend.name
        health = "[green]ok[/]" if backend.healthy else f"[red]{escape(backend.health)}[/]"
        table.add_row(name, backend.kind, str(backend.num_qubits), backend.noise or "", health)
    console.print(table)
    return 0


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _styled(result: TaskResult) -> str:
    style = {"completed": "green", "error": "red"}.get(result.status, "yellow")
    return f"[{style}]{result.status}[/]"


def _detail(result: TaskResult) -> str:
    if result.counts is not None:
        return f"{sum(result.counts.values())} shots, {len(result.counts)} outcomes"
    return result.error or ""


def _circuit_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.qasm")) if path.is_dir() else [path]
    return files


def _wait(
    client: Client, ids: list[str], timeout: float | None, console: Console, *, show: bool
) -> list[TaskResult]:
    if not show:
        return client.wait(ids, timeout=timeout)
    columns = (
        TextColumn("running"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("tasks", total=len(ids))
        return client.wait(
            ids, timeout=timeout, progress=lambda done, _: progress.update(bar, completed=done)
        )


def _status_table(
    console: Console, results: list[TaskResult], files: list[Path] | None = None
) -> None:
    table = Table(*(["file"] if files else []), "task id", "status", "detail")
    for n, result in enumerate(results):
        row = [str(files[n])] if files else []
        table.add_row(*row, result.id, _styled(result), _detail(result))
    console.print(table)


def _show_result(console: Console, result: TaskResult) -> None:
    if result.counts is None:
        detail = f": {result.error}" if result.error else " (use --wait to wait for it)"
        console.print(f"{result.id}: {result.status}{detail}")
        return
    shots = sum(result.counts.values())
    top = max(result.counts.values())
    table = Table(title=f"{result.id}: {shots} shots")
    table.add_column("outcome", style="bold")
    table.add_column("count", justify="right")
    table.add_column("probability", justify="right")
    table.add_column("histogram", width=40)
    for outcome, count in sorted(result.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        bar = Bar(size=top, begin=0, end=count, width=40, color="cyan")
        table.add_row(outcome, str(count), f"{count / shots:.3f}", bar)
    console.print(table)
    if result.memory is not None:
        more = f" ... ({len(result.memory)} shots)" if len(result.memory) > MEMORY_SHOWN else ""
        console.print(f"memory: {' '.join(result.memory[:MEMORY_SHOWN])}{more}")


def _as_dict(result: TaskResult) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "task_id": result.id,
        "status": result.status,
        "counts": result.counts,
        "error": result.error,
    }
    if result.memory is not None:
        shown["memory"] = result.memory
    return shown


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
