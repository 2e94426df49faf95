"""What the runtime executes (mesh part 2, FR-006/FR-010): a job's fragment DAG, read from the
planner's Plan, and the files that keep each completed fragment's output state.

`JobPlan` holds only what the runtime needs of planner.Plan (fragment ids, slices, qubits,
dependencies, chosen node and fallbacks, whether it measures) and has a JSON form, so the plan a
job started with is kept beside its states and a restarted coordinator resumes the same DAG
(re-planning after a restart would see another registry and could cut the circuit
differently, which would orphan the states already computed).

`StateFiles` keeps, beside the coordinator's database (`<database>.states/<job id>/`), the plan
and one `.npy` per completed fragment, written to a temporary name, fsynced and renamed, so a
file that exists is whole. A fragment counts as done on resume only when its attempt record
says completed AND its state file exists. No libp2p and no Aer here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtask.mesh.handoff import State
from qtask.mesh.planner import placement_json
from qtask.mesh.protocol import CircuitIR


@dataclass(frozen=True, slots=True)
class FragmentSpec:
    """One fragment of a job's DAG, as the runtime runs it."""

    fragment_id: str
    circuit: CircuitIR
    qubits: tuple[int, ...]  # the job qubits that the slice's qubits 0..k-1 are
    gates: frozenset[str]
    depends_on: tuple[str, ...]
    node_id: str
    fallbacks: tuple[str, ...]
    measure: bool
    est_fidelity: float = 1.0

    @property
    def num_qubits(self) -> int:
        """The slice's width (what a node's qubit range must take)."""
        return self.circuit.num_qubits

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            **placement_json(self),
            "measure": self.measure,
            "est_fidelity": self.est_fidelity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FragmentSpec:
        """The fragment `to_dict` wrote."""
        return cls(
            fragment_id=data["fragment_id"],
            circuit=CircuitIR.model_validate(data["circuit"]),
            qubits=tuple(data["qubits"]),
            gates=frozenset(data["gates"]),
            depends_on=tuple(data["depends_on"]),
            node_id=data["node_id"],
            fallbacks=tuple(data["fallbacks"]),
            measure=bool(data["measure"]),
            est_fidelity=float(data.get("est_fidelity", 1.0)),
        )


@dataclass(frozen=True, slots=True)
class JobPlan:
    """A job's fragments in topological order, and the digest of the registry it was made on."""

    job_id: str
    fragments: tuple[FragmentSpec, ...]
    snapshot_digest: str = ""
    num_clbits: int = 0
    cregs: tuple[tuple[str, int], ...] = ()

    def fragment(self, fragment_id: str) -> FragmentSpec:
        """The fragment with this id (KeyError if none)."""
        for fragment in self.fragments:
            if fragment.fragment_id == fragment_id:
                return fragment
        raise KeyError(fragment_id)

    def ready(self, done: Iterable[str], running: Iterable[str]) -> list[FragmentSpec]:
        """Fragments whose dependencies are all done and that are neither done nor running."""
        finished, busy = set(done), set(running)
        return [
            f
            for f in self.fragments
            if f.fragment_id not in finished
            and f.fragment_id not in busy
            and all(d in finished for d in f.depends_on)
        ]

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys)."""
        body = {
            "job_id": self.job_id,
            "snapshot_digest": self.snapshot_digest,
            "num_clbits": self.num_clbits,
            "cregs": [list(c) for c in self.cregs],
            "fragments": [f.to_dict() for f in self.fragments],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobPlan:
        """The plan `to_json` wrote."""
        body = json.loads(data)
        return cls(
            job_id=body["job_id"],
            fragments=tuple(FragmentSpec.from_dict(f) for f in body["fragments"]),
            snapshot_digest=body.get("snapshot_digest", ""),
            num_clbits=int(body.get("num_clbits", 0)),
            cregs=tuple((str(n), int(k)) for n, k in body.get("cregs", ())),
        )

    @classmethod
    def from_plan(cls, plan: Any, circuit: CircuitIR) -> JobPlan:
        """The runtime's view of a planner.Plan (the agreed shape: see docs/mesh.md)."""
        return cls(
            job_id=plan.job_id,
            fragments=tuple(
                FragmentSpec(
                    fragment_id=f.fragment_id,
                    circuit=f.circuit,
                    qubits=tuple(f.qubits),
                    gates=frozenset(f.gates),
                    depends_on=tuple(f.depends_on),
                    node_id=f.node_id,
                    fallbacks=tuple(f.fallbacks),
                    measure=bool(f.measure),
                    est_fidelity=float(getattr(f, "est_fidelity", 1.0)),
                )
                for f in plan.fragments
            ),
            snapshot_digest=str(getattr(plan, "snapshot_digest", "")),
            num_clbits=circuit.num_clbits,
            cregs=circuit.cregs,
        )


class StateFiles:
    """The plan and completed fragments' output states of each job, beside the database."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, job_id: str) -> Path:
        return self.root / job_id

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        # The rename itself must survive a power cut, not only the bytes.
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def save_plan(self, plan: JobPlan) -> None:
        """Keep the plan a job runs (before its first fragment runs)."""
        self._write(self._dir(plan.job_id) / "plan.json", plan.to_json())

    def load_plan(self, job_id: str) -> JobPlan | None:
        """The plan kept for the job, or None."""
        path = self._dir(job_id) / "plan.json"
        if not path.exists():
            return None
        return JobPlan.from_json(path.read_bytes())

    def save_state(self, job_id: str, fragment_id: str, state: State) -> int:
        """Keep a completed fragment's output state; its size in bytes."""
        buffer = io.BytesIO()
        np.save(buffer, state, allow_pickle=False)
        data = buffer.getvalue()
        self._write(self._dir(job_id) / f"{fragment_id}.npy", data)
        return len(data)

    def load_state(self, job_id: str, fragment_id: str) -> State | None:
        """The kept output state of a fragment, or None."""
        path = self._dir(job_id) / f"{fragment_id}.npy"
        if not path.exists():
            return None
        state: State = np.load(path, allow_pickle=False)
        return state

    def delete(self, job_id: str) -> None:
        """Forget a finished job's states (its counts are in the database)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._dir(job_id))
