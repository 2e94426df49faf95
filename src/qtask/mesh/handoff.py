"""State hand-off between fragments (mesh part 2, FR-006): run a slice on a state, encode
states for the wire, join parallel groups' states, and combine counts of independent groups.

A node runs its slice on the state it receives and returns the output state; the last
fragment samples counts. Ideal nodes hand off statevectors (16·2^n bytes); a noisy node, or
any node given a density matrix, hands off density matrices (16·4^n bytes): a statevector
carries one noise trajectory and would give the wrong distribution, a density matrix carries
the whole mixed state, so counts sampled at the end follow the exact noisy distribution. The
width caps (`[mesh.node] max_density_qubits` 10, `max_statevector_qubits` 22) keep one
hand-off under the frame limit (a 10-qubit density matrix is 16 MiB).

Qubit order is Qiskit's (little-endian: qubit 0 is the least significant bit of a basis
index). A state covers the job qubits listed with it, the first listed being qubit 0 of the
state. Pure numpy and Aer; no I/O: the node runs `run_slice` in its child processes, the
coordinator's runtime uses `join` and `combine_counts`.
"""

from __future__ import annotations

import base64
import io
import random
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from qiskit.circuit import QuantumCircuit
from qiskit.quantum_info import DensityMatrix, Statevector
from qiskit_aer import AerSimulator

from qtask.errors import ExecutionError
from qtask.mesh.ir import ir_to_circuit
from qtask.mesh.noise import noise_model
from qtask.mesh.protocol import CircuitIR, NoiseSpec

State = npt.NDArray[np.complex128]


def encode_state(state: State) -> str:
    """base64 of the array in numpy's .npy format (shape and dtype included)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(state, dtype=np.complex128), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_state(data: str, num_qubits: int | None = None) -> State:
    """The array `encode_state` wrote; ValueError when it is not a state (of `num_qubits`)."""
    try:
        array = np.load(io.BytesIO(base64.b64decode(data, validate=True)), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"the state is not a base64 .npy array: {exc}") from exc
    state = np.asarray(array, dtype=np.complex128)
    if state.ndim not in (1, 2) or (state.ndim == 2 and state.shape[0] != state.shape[1]):
        raise ValueError(f"a state is a vector or a square matrix, not shape {state.shape}")
    dim = state.shape[0]
    if dim < 2 or dim & (dim - 1):
        raise ValueError(f"a state's dimension is a power of two, not {dim}")
    if num_qubits is not None and dim != 2**num_qubits:
        raise ValueError(f"the state has {dim.bit_length() - 1} qubits, the slice {num_qubits}")
    return state


def state_qubits(state: State) -> int:
    """How many qubits a statevector or density matrix describes."""
    return int(state.shape[0]).bit_length() - 1


def is_density(state: State) -> bool:
    """Whether `state` is a density matrix (else a statevector)."""
    return state.ndim == 2


def run_slice(
    ir: CircuitIR,
    noise: NoiseSpec,
    shots: int,
    seed: int | None,
    input_state: State | None,
    return_state: bool,
) -> tuple[dict[str, int] | None, State | None]:
    """Run `ir` on `input_state` (|0..0> when None) under `noise`: (counts, None) when it
    measures and no state is asked for, else (None, the output state)."""
    model = noise_model(noise)
    density = model is not None or (input_state is not None and is_density(input_state))
    body = ir_to_circuit(ir)
    circuit = QuantumCircuit(*body.qregs, *body.cregs)
    if input_state is not None:
        if density:
            rho = (
                input_state
                if is_density(input_state)
                else np.outer(input_state, input_state.conj())
            )
            circuit.set_density_matrix(DensityMatrix(rho))
        else:
            circuit.set_statevector(Statevector(input_state))
    circuit.compose(body, inplace=True)
    method = "density_matrix" if density else "statevector"
    simulator = AerSimulator(
        method=method, noise_model=model, seed_simulator=seed, max_parallel_threads=1
    )
    if return_state:
        if any(op.name == "measure" for op in ir.instructions):
            raise ExecutionError("a fragment that hands its state on cannot measure")
        if density:
            circuit.save_density_matrix()
        else:
            circuit.save_statevector()
        result = simulator.run(circuit, shots=1).result()
        if not result.success:
            raise ExecutionError(f"Aer could not run the slice: {result.status}")
        return None, np.asarray(result.data(0)[method], dtype=np.complex128)
    if not any(op.name == "measure" for op in ir.instructions):
        raise ExecutionError("The circuit measures nothing, so it has no counts.")
    result = simulator.run(circuit, shots=shots).result()
    if not result.success:
        raise ExecutionError(f"Aer could not run the slice: {result.status}")
    return {str(k): int(v) for k, v in result.get_counts().items()}, None


def child_run_slice(
    ir: CircuitIR,
    noise: NoiseSpec,
    shots: int,
    seed: int | None,
    input_state: str | None,
    return_state: bool,
) -> tuple[dict[str, int] | None, str | None, float]:
    """`run_slice` with states encoded (what a node's child runs): (counts, state, seconds)."""
    started = time.perf_counter()
    try:
        state = None if input_state is None else decode_state(input_state, ir.num_qubits)
    except ValueError as exc:
        raise ExecutionError(f"bad input_state: {exc}") from exc
    counts, out = run_slice(ir, noise, shots, seed, state, return_state)
    return counts, None if out is None else encode_state(out), time.perf_counter() - started


def _as_density(state: State) -> State:
    return state if is_density(state) else np.outer(state, state.conj())


def join(parts: Sequence[tuple[Sequence[int], State]], qubits: Sequence[int]) -> State:
    """One state over `qubits` (job qubit ids; the first is the state's qubit 0) from the
    states of independent groups, each over its own job qubits; `qubits` no part covers start
    in |0>. A density matrix if any part is one, else a statevector."""
    target = list(qubits)
    covered = [q for part_qubits, _ in parts for q in part_qubits]
    if len(set(covered)) != len(covered):
        raise ValueError(f"the parts overlap on qubits {sorted(covered)}")
    missing = set(covered) - set(target)
    if missing:
        raise ValueError(f"the parts carry qubits {sorted(missing)} the fragment does not take")
    density = any(is_density(state) for _, state in parts)
    order: list[int] = []
    # Tensor product, qubit order right: the first part holds the least significant qubits.
    joined: State = np.ones(1 if not density else (1, 1), dtype=np.complex128)
    pieces: list[tuple[list[int], State]] = [(list(q), s) for q, s in parts]
    for q in target:
        if q not in covered:
            zero = np.array([1, 0], dtype=np.complex128)
            pieces.append(([q], zero))
    for part_qubits, state in pieces:
        piece = _as_density(state) if density else state
        joined = np.asarray(np.kron(piece, joined), dtype=np.complex128)
        order.extend(part_qubits)
    return _permute(joined, order, target, density)


def _permute(state: State, order: list[int], target: list[int], density: bool) -> State:
    """Reorder a state whose qubit i is job qubit order[i] so qubit i is target[i]."""
    n = len(order)
    if order == target:
        return state
    # numpy axes are big-endian: axis k is qubit n-1-k.
    src_axes = [n - 1 - order.index(q) for q in reversed(target)]
    if not density:
        tensor = state.reshape([2] * n).transpose(src_axes)
        return np.ascontiguousarray(tensor.reshape(2**n))
    tensor = state.reshape([2] * (2 * n)).transpose(src_axes + [a + n for a in src_axes])
    return np.ascontiguousarray(tensor.reshape(2**n, 2**n))


def combine_counts(
    parts: Sequence[tuple[dict[str, int], Sequence[int]]], num_clbits: int, seed: int | None
) -> dict[str, int]:
    """Counts of independent groups measured apart, as one distribution: each part's counts
    over the job's whole classical layout, with `clbits` the bits it measured; shots are
    paired at random (seeded), which samples the product of independent distributions."""
    if len(parts) == 1:
        return dict(parts[0][0])
    rng = random.Random(seed)
    columns: list[list[str]] = []
    for counts, _ in parts:
        shots = [key for key, n in sorted(counts.items()) for _ in range(n)]
        rng.shuffle(shots)
        columns.append(shots)
    total = min(len(c) for c in columns)
    out: dict[str, int] = {}
    for i in range(total):
        bits = ["0"] * num_clbits
        for (_, clbits), column in zip(parts, columns, strict=True):
            flat = column[i].replace(" ", "")
            for clbit in clbits:
                bits[clbit] = flat[len(flat) - 1 - clbit]
        key = "".join(reversed(bits))
        out[key] = out.get(key, 0) + 1
    return out
