"""The handler that parses circuits in a child process, away from the API's event loop."""

from __future__ import annotations

from qtask.circuits.ingest import IngestedCircuit, Limits, ingest
from qtask.errors import CircuitError

ParseReply = tuple[str, IngestedCircuit | None, int, str]


def parse(request: tuple[str, Limits]) -> ParseReply:
    """Ingest a source; return ("ok", circuit, 0, "") or ("invalid", None, status, message)."""
    source, limits = request
    try:
        return ("ok", ingest(source, limits), 0, "")
    except CircuitError as exc:
        return ("invalid", None, exc.status_code, str(exc))


def warm_up() -> None:
    """Load the ANTLR importer now rather than on the first slow circuit (~60 ms)."""
    import openqasm3
    import qiskit_qasm3_import  # noqa: F401

    openqasm3.parse("OPENQASM 3.0; qubit q;")
