"""The handler that parses circuits in a child process, away from the API's event loop."""

from __future__ import annotations

import resource

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


# Memory a parse may add to what the warmed-up child already maps. A circuit whose size only
# the parser can work out (`const uint n = ...; qubit[n] q;`) could otherwise make the child
# allocate until the machine runs out; past this it fails, and the circuit is refused.
PARSE_MEMORY_HEADROOM_BYTES = 2 << 30


def warm_up() -> None:
    """Load the ANTLR importer now rather than on the first slow circuit (~60 ms); cap memory."""
    import openqasm3
    import qiskit_qasm3_import  # noqa: F401

    openqasm3.parse("OPENQASM 3.0; qubit q;")
    mapped = _mapped_bytes()
    if mapped is not None:
        limit = mapped + PARSE_MEMORY_HEADROOM_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
