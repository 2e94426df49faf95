"""GET /backends: every configured backend, its capabilities and its health."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Response

from qtask.api.routes import _READ_ERRORS, CallerDep, ServiceDep
from qtask.api.schemas import BackendsResponse
from qtask.domain.backends import ExecutionBackend

router = APIRouter()


@router.get(
    "/backends",
    response_model=BackendsResponse,
    responses=_READ_ERRORS,
    summary="List the backends",
)
async def list_backends(service: ServiceDep, caller: CallerDep) -> Response:
    """The backends a submission may name in `"backend"`, the default first."""
    catalog = service.backends()
    backends = catalog.all()
    healths = await asyncio.gather(*(backend.health() for backend in backends))
    body = {
        "default": catalog.default,
        "backends": [
            backend_body(backend, backend.capabilities.name == catalog.default, health)
            for backend, health in zip(backends, healths, strict=True)
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json")


def backend_body(backend: ExecutionBackend, default: bool, health: str) -> dict[str, object]:
    """One backend as GET /backends shows it (the shape agreed for #11)."""
    capabilities = backend.capabilities
    coupling = capabilities.coupling_map
    return {
        "name": capabilities.name,
        "type": capabilities.type,
        "kind": capabilities.kind.value,
        "default": default,
        "num_qubits": capabilities.num_qubits,
        "max_qubits": dict(capabilities.max_qubits),
        "basis_gates": None if capabilities.basis_gates is None else list(capabilities.basis_gates),
        "coupling_map": None if coupling is None else [list(pair) for pair in coupling],
        "noise": capabilities.noise,
        "max_shots": capabilities.max_shots,
        "memory": capabilities.memory,
        "seeds": capabilities.seeds,
        "cancel": capabilities.cancel,
        "health": health,
    }
