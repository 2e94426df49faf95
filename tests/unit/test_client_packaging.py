"""A client-only install stays light: qtask.client and the command line's client commands import
nothing of the server, and the server commands say what to install when it is missing.

The import graph is read from the sources (an import-linter-style contract written as a test);
a subprocess with an import hook that refuses the server's modules proves it at run time.
tests/e2e/test_client_install.py installs the client into a fresh venv.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import qtask

SRC = Path(qtask.__file__).parent
# What the client may import: the standard library, its two dependencies, and qtask's
# dependency-free root (the version and the error tree).
CLIENT_MAY_IMPORT = {"httpx", "rich", "qtask", "qtask.errors"}
# Imported only inside the function that writes out a caller's Qiskit circuit.
# qtask.client.qiskit is the Qiskit backend (the `qiskit` extra): nothing else imports it.
LAZY = {("circuits.py", "qiskit"), ("qiskit.py", "qiskit")}
SERVER_MODULES = [
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "qiskit",
    "qiskit_aer",
    "redis",
    "nats",
    "obstore",
    "orjson",
    "structlog",
    "prometheus_client",
]


def _imports(path: Path, *, top_level_only: bool) -> list[tuple[str, bool]]:
    """(module, at module level) for every import in `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            at_top = id(node) in top
            if at_top or not top_level_only:
                found.append((name, at_top))
    return found


def _allowed(module: str) -> bool:
    root = module.split(".")[0]
    return (
        module.startswith("qtask.client")
        or module in CLIENT_MAY_IMPORT
        or root in {"httpx", "rich"}
        or (root in sys.stdlib_module_names and root != "qtask")
    )


def test_the_client_package_imports_nothing_of_the_server() -> None:
    offending = [
        (path.name, module)
        for path in sorted((SRC / "client").glob("*.py"))
        for module, _ in _imports(path, top_level_only=False)
        if not _allowed(module) and (path.name, module.split(".")[0]) not in LAZY
    ]
    assert offending == []


def test_the_command_line_module_imports_the_server_only_inside_server_commands() -> None:
    top = [module for module, _ in _imports(SRC / "cli.py", top_level_only=True)]
    assert [m for m in top if not _allowed(m) and m != "__future__"] == []


def test_client_commands_run_where_the_server_modules_cannot_be_imported() -> None:
    script = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from importlib.abc import MetaPathFinder

        FORBIDDEN = {SERVER_MODULES!r}
        SERVER_PARTS = ("qtask.config", "qtask.api", "qtask.application", "qtask.assembly",
                        "qtask.worker", "qtask.adapters", "qtask.circuits")

        class NoServer(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:  # as if not installed
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, NoServer())
        import qtask.client
        from qtask.cli import main
        out = io.StringIO()
        for argv in (["--help"], ["submit", "--help"], ["result", "--help"]):
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main(argv)
        loaded = sorted(m for m in sys.modules if m.startswith(SERVER_PARTS))
        code = main(["serve"])
        print("CODE", code, "LOADED", loaded, "HELP", "qtask submit" in out.getvalue())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "CODE 2 LOADED [] HELP True" in done.stdout
    assert "pip install 'qtask[server]'" in done.stderr
    assert "Traceback" not in done.stderr
