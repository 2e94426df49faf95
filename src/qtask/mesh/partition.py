"""FR-003: a circuit's IR cut into fragment drafts with dependencies (a DAG), for the planner.

Two shapes, both exact (replaying the drafts in DAG order gives the circuit's state):
- `whole`: every operation in one draft.
- `groups`: qubits that no gate has linked yet form independent groups, each its own draft,
  run in parallel; a gate that spans groups closes their drafts and opens a join draft that
  depends on them (its input is the product of their output states).
Then `slice_drafts` cuts a draft no single node can run (a gate it lacks, a width it does not
take) into contiguous slices, each as long as some node can run it, that hand the state on.

Measurement and reset end a qubit group's hand-off: a statevector after a measurement carries
one outcome, not the distribution. So a group that has measured or reset never closes early: a
gate that later spans it and another group merges them into one draft, and a slice cut after a
measurement or reset is refused (PlanInfeasibleError naming the operation). Barriers do not
change the state: one inside a group stays, one spanning groups is dropped.

Pure: indices and sets only, no Qiskit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qtask.errors import QTaskError
from qtask.mesh.protocol import CircuitIR, Instruction

# Directives every Aer node runs and no advert needs to list (qtask.mesh.ir.DIRECTIVES).
DIRECTIVES = frozenset({"barrier", "measure", "reset"})
# Operations after which a qubit's state can no longer be handed on as one state.
_TERMINAL = frozenset({"measure", "reset"})


class MidCircuitMeasurementError(QTaskError):
    """Raised when a measurement or reset would have to hand its post-measurement state on."""


@dataclass(frozen=True)
class Draft:
    """A fragment before assignment: operations (indices into the circuit), in order."""

    ops: tuple[int, ...]
    qubits: tuple[int, ...]  # ascending: the job qubits of the state it holds
    deps: tuple[int, ...]  # indices of the drafts it needs (earlier in the list)
    gates: frozenset[str]  # gate names, directives left out
    terminal: bool  # holds a measurement or reset
    size: int  # operations other than barriers: what the fidelity model counts

    @property
    def width(self) -> int:
        """Qubits of the state this draft evolves."""
        return len(self.qubits)


@dataclass
class _Group:
    ops: list[int] = field(default_factory=list)
    qubits: set[int] = field(default_factory=set)
    deps: set[int] = field(default_factory=set)
    frozen: bool = False


def whole(circuit: CircuitIR) -> list[Draft]:
    """Every operation as one draft."""
    group = _Group()
    for index, op in enumerate(circuit.instructions):
        group.ops.append(index)
        group.qubits.update(op.qubits)
        group.frozen |= op.name in _TERMINAL
    if not group.ops:
        group.qubits.add(0)
    return _finish(circuit, [_close(circuit, group)])


def groups(circuit: CircuitIR) -> list[Draft]:
    """Independent qubit groups as parallel drafts, joined where a gate spans them."""
    closed: list[tuple[Draft, set[int]]] = []  # (draft with deps as closing ids)
    owner: dict[int, _Group] = {}
    for index, op in enumerate(circuit.instructions):
        touched: list[_Group] = []
        for q in op.qubits:
            g = owner.get(q)
            if g is not None and all(g is not t for t in touched):
                touched.append(g)
        if op.name == "barrier":
            if len(touched) == 1 and all(q in owner for q in op.qubits):
                touched[0].ops.append(index)
            continue  # a barrier spanning groups changes no state: dropped
        if not touched:
            group = _Group()
        elif len(touched) == 1:
            group = touched[0]
        elif any(g.frozen for g in touched):
            group = _Group(frozen=True)  # a measured group never hands off: merge instead
            for g in touched:
                group.ops.extend(g.ops)
                group.qubits |= g.qubits
                group.deps |= g.deps
            group.ops.sort()
        else:
            group = _Group()
            for g in sorted(touched, key=lambda t: t.ops[0]):
                closed.append((_close(circuit, g), g.deps))
                group.deps.add(len(closed) - 1)
                group.qubits |= g.qubits
        group.ops.append(index)
        group.qubits.update(op.qubits)
        group.frozen |= op.name in _TERMINAL
        for q in group.qubits:
            owner[q] = group
    live: list[_Group] = []
    for g in owner.values():
        if all(g is not t for t in live):
            live.append(g)
    for g in sorted(live, key=lambda t: t.ops[0]):
        closed.append((_close(circuit, g), g.deps))
    if not closed:
        return whole(circuit)
    # Topological order: by first operation (a draft's predecessors all end before it starts).
    order = sorted(range(len(closed)), key=lambda k: closed[k][0].ops[0])
    position = {old: new for new, old in enumerate(order)}
    drafts = [
        replace(closed[old][0], deps=tuple(sorted(position[d] for d in closed[old][1])))
        for old in order
    ]
    return _finish(circuit, drafts)


Runnable = Callable[[frozenset[str], int, bool], bool]


def slice_drafts(circuit: CircuitIR, drafts: list[Draft], runnable: Runnable) -> list[Draft]:
    """Cut each draft that no node can run (`runnable(gates, width, hands_off)`) into maximal
    contiguous slices some node can run. A gate that no node runs alone is left in its own slice
    for the caller's infeasibility check. MidCircuitMeasurementError when a cut would follow a
    measurement or reset."""
    has_dependents = {d for draft in drafts for d in draft.deps}
    out: list[Draft] = []
    last_slice: dict[int, int] = {}  # old draft index -> index of its last slice in `out`
    for index, draft in enumerate(drafts):
        deps = tuple(last_slice[d] for d in draft.deps)
        hands_off = bool(draft.deps) or index in has_dependents
        if runnable(draft.gates, draft.width, hands_off) or not runnable(
            frozenset(), draft.width, True
        ):  # runnable whole, or no node takes its width at all: slicing cannot help
            out.append(replace(draft, deps=deps))
            last_slice[index] = len(out) - 1
            continue
        pieces: list[list[int]] = [[]]
        gates: set[str] = set()
        for op_index in draft.ops:
            op = circuit.instructions[op_index]
            name = frozenset() if op.name in DIRECTIVES else frozenset({op.name})
            current = pieces[-1]
            if current and not runnable(frozenset(gates | name), draft.width, True):
                previous = next(
                    (circuit.instructions[i] for i in current
                     if circuit.instructions[i].name in _TERMINAL), None,
                )  # fmt: skip
                if previous is not None:
                    raise MidCircuitMeasurementError(_mid_circuit(previous, op))
                pieces.append([])
                gates = set()
            pieces[-1].append(op_index)
            gates |= name
        for piece in pieces:
            out.append(
                Draft(
                    tuple(piece),
                    draft.qubits,
                    deps,
                    _gates(circuit, piece),
                    any(circuit.instructions[i].name in _TERMINAL for i in piece),
                    _size(circuit, piece),
                )
            )
            deps = (len(out) - 1,)
        last_slice[index] = len(out) - 1
    return out


def fragment_circuit(circuit: CircuitIR, draft: Draft, measure: bool) -> CircuitIR:
    """The draft's slice as an IR over its own qubits (renumbered 0..k-1); a measuring draft
    keeps the job's classical layout so its counts read as the job's."""
    index = {q: i for i, q in enumerate(draft.qubits)}
    ops = tuple(
        Instruction(
            name=op.name,
            qubits=tuple(index[q] for q in op.qubits),
            clbits=op.clbits,
            params=op.params,
        )
        for op in (circuit.instructions[i] for i in draft.ops)
    )
    if measure:
        return CircuitIR(
            num_qubits=draft.width,
            num_clbits=circuit.num_clbits,
            instructions=ops,
            cregs=circuit.cregs,
        )
    return CircuitIR(num_qubits=draft.width, num_clbits=0, instructions=ops)


def _close(circuit: CircuitIR, group: _Group) -> Draft:
    return Draft(
        tuple(group.ops),
        tuple(sorted(group.qubits)),
        (),
        _gates(circuit, group.ops),
        group.frozen,
        _size(circuit, group.ops),
    )


def _gates(circuit: CircuitIR, ops: list[int] | tuple[int, ...]) -> frozenset[str]:
    return frozenset(circuit.instructions[i].name for i in ops) - DIRECTIVES


def _size(circuit: CircuitIR, ops: list[int] | tuple[int, ...]) -> int:
    return sum(1 for i in ops if circuit.instructions[i].name != "barrier")


def _finish(circuit: CircuitIR, drafts: list[Draft]) -> list[Draft]:
    # A join draft carries its predecessors' qubits as well as those its operations touch.
    out: list[Draft] = []
    for draft in drafts:
        qubits = set(draft.qubits)
        for d in draft.deps:
            qubits |= set(out[d].qubits)
        out.append(replace(draft, qubits=tuple(sorted(qubits))))
    return out


def _mid_circuit(previous: Instruction, op: Instruction) -> str:
    return (
        f"mid-circuit {previous.name} on qubit(s) {list(previous.qubits)} is followed by "
        f"`{op.name}`, which no node that ran the {previous.name} also offers: the mesh hands "
        "off quantum states, not measurement outcomes, so a fragment cannot end after a "
        "measurement or reset. Offer these gates on one node, or move the measurement to the end."
    )
