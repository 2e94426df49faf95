"""Circuit ingestion as the API runs it: small circuits that Qiskit's native importer reads
are parsed inline on the event loop; anything else goes to a parser child process with a
deadline (qtask.runtime.pool), so a slow or hostile circuit never stalls the loop."""

from __future__ import annotations

import asyncio

from qtask.circuits.ingest import IngestedCircuit, Limits, NeedsSlowPathError, ingest
from qtask.circuits.parse_child import ParseReply
from qtask.config import LimitsSettings
from qtask.constants import INLINE_PARSE_MAX_BYTES
from qtask.errors import CircuitError, CircuitTooLargeError
from qtask.runtime.pool import ChildCrashedError, ChildFailedError, ChildPool, ChildTimeoutError


def limits_from(settings: LimitsSettings) -> Limits:
    """The circuit limits named by the settings."""
    return Limits(
        max_circuit_bytes=settings.max_circuit_bytes,
        max_qubits=settings.max_qubits,
        max_operations=settings.max_operations,
        max_statevector_bytes=settings.max_statevector_mb << 20,
    )


class CircuitIngestor:
    """Parses small, natively readable circuits inline and everything else in a child process."""

    def __init__(self, settings: LimitsSettings, pool: ChildPool | None) -> None:
        self._limits = limits_from(settings)
        self._pool = pool
        self._timeout = settings.parse_timeout_s

    async def ingest(self, source: str) -> IngestedCircuit:
        """Check and parse a circuit; raise CircuitError with the reason when it is not valid."""
        if len(source) <= INLINE_PARSE_MAX_BYTES:
            try:
                return ingest(source, self._limits, fast_only=True)
            except NeedsSlowPathError:
                pass
        if self._pool is None:
            return await asyncio.to_thread(ingest, source, self._limits)
        try:
            reply: ParseReply = await self._pool.call((source, self._limits), self._timeout)
        except ChildTimeoutError:
            raise CircuitTooLargeError(
                f"The circuit could not be parsed within {self._timeout:g} s."
            ) from None
        except (ChildCrashedError, ChildFailedError) as exc:
            raise CircuitError(f"The circuit could not be parsed: {exc}.") from None
        kind, circuit, status, message = reply
        if kind != "ok" or circuit is None:
            error = CircuitTooLargeError(message) if status == 422 else CircuitError(message)
            raise error
        return circuit
