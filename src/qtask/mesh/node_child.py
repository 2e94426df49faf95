"""What a node and its child processes exchange over the pool's pipe (qtask.runtime.pool pickles
it): the request and reply shapes, and the `Calibration` a child measures.

Nothing of Qiskit here: the node's own process imports this module, and unpickling a reply
imports the modules its classes live in. The children run Aer (qtask.mesh.noise); the node's
process never imports Qiskit or Aer: 0.6 s less of imports at each node's start (2.56 -> 1.9 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ("simulate", (ir, noise, shots, seed)), ("calibrate", (noise, shots)) or
# ("slice", (ir, noise, shots, seed, input_state, return_state)): qtask.mesh.noise.child_handle.
ChildRequest = tuple[str, Any]
# ("ok", value), ("circuit_error", message) or ("execution_error", message).
ChildReply = tuple[str, Any]


@dataclass(frozen=True)
class Calibration:
    """A node's measured fidelity, when, and the two circuits' fidelities it is the mean of."""

    fidelity: float
    measured_at: float
    bell: float
    ghz3: float
