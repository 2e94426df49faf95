"""Keeps what the API knows of its remote backends fresh: a periodic pass that asks each remote
backend its health, which re-reads the provider's capabilities (a remote qtask's GET /backends,
an IBM device's configuration). Admission at submit then uses what the provider says now even
when nobody calls GET /backends, and a provider that went away is logged once when it goes and
once when it is back. Runs in every process that serves the API; no Qiskit is imported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from qtask.constants import BACKEND_REFRESH_SECONDS
from qtask.domain.backends import ExecutionBackend
from qtask.logs import get_logger
from qtask.runtime.periodic import Periodic

log = get_logger("backends")


class CapabilityRefresher(Periodic):
    """Calls health() on each backend every `interval` seconds; remembers the answers."""

    name = "backend_refresh"

    def __init__(
        self, backends: Sequence[ExecutionBackend], interval: float = BACKEND_REFRESH_SECONDS
    ) -> None:
        self._backends = list(backends)
        self.healths: dict[str, str] = {}
        super().__init__(interval)

    async def run_once(self) -> dict[str, str]:
        """One pass: every backend's health, read concurrently (each bounds its own call)."""
        answers = await asyncio.gather(*(backend.health() for backend in self._backends))
        for backend, health in zip(self._backends, answers, strict=True):
            name = backend.capabilities.name
            before = self.healths.get(name)
            if health != before:
                if health == "ok":
                    log.info("backend_reachable", backend=name)
                else:
                    log.warning("backend_unreachable", backend=name, health=health)
            self.healths[name] = health
        return dict(self.healths)
