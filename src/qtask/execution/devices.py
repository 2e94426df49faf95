"""Run circuits on Aer with an IBM device's noise, inside a worker child process.

Each device's simulator (`AerSimulator.from_backend(Fake...())`, 1.4–2.9 s to build) is built
on the first task that names it in this process and then reused; so is a preset pass manager
(optimisation level 1, ~3–20 ms to build) per transpiler seed, a few of them at once. Nothing
here runs at process start, so a worker starts as fast with devices configured as without.

Each run passes Aer a noise model cut down to the physical qubits the transpiled circuit uses:
Aer serialises the whole noise model on every call (a 127-qubit device's: ~1.2 s of a Bell run;
156 qubits: 3–5 s), and errors on qubits no instruction touches never apply, so the counts are
the same (the integration test compares them with a direct run on the full model). Measured: a
Bell run on fake_brisbane 1.0–1.3 s -> 6 ms; fake_fez 3.3–4.8 s -> 17–38 ms.

Seeds: a seeded task is transpiled with `seed_transpiler` = its seed and simulated with
`seed_simulator` = its seed, so its counts equal those of a direct run of
`generate_preset_pass_manager(optimization_level=1, backend=AerSimulator.from_backend(fake),
seed_transpiler=seed)` and `run(..., seed_simulator=seed)`. Unseeded tasks are transpiled with
seed 0 (the same layout every time) and sampled unseeded.
"""

from __future__ import annotations

import importlib
import time
from collections import OrderedDict, defaultdict
from typing import Any

from qiskit.circuit import QuantumCircuit
from qiskit.transpiler import PassManager

from qtask.execution.aer import load_circuit
from qtask.execution.items import RunItem, RunOutcome

# Pass managers kept per process: one per (device, transpiler seed). A seeded workload with
# many seeds rebuilds them (cheap), a workload with few keeps them.
_PASS_MANAGERS_KEPT = 16
# The transpiler seed of tasks that have none.
UNSEEDED_TRANSPILE_SEED = 0

# Cut-down noise models kept per process, one per (device, set of physical qubits used).
_NOISE_MODELS_KEPT = 64

_simulators: dict[str, Any] = {}
_noise_models: OrderedDict[tuple[str, frozenset[int]], Any] = OrderedDict()
_pass_managers: OrderedDict[tuple[str, int], PassManager] = OrderedDict()
_options: dict[str, Any] = {}


def configure(threads: int, memory_budget_mb: int) -> None:
    """Remember the thread and memory limits the device simulators get when built."""
    _options.update(
        max_parallel_threads=threads,
        max_parallel_experiments=threads,
        max_memory_mb=memory_budget_mb,
    )


def fake_backend(device: str) -> Any:
    """qiskit-ibm-runtime's fake device called `device` (e.g. fake_brisbane)."""
    short = device.removeprefix("fake_")
    module = importlib.import_module(f"qiskit_ibm_runtime.fake_provider.backends.{short}")
    for value in vars(module).values():
        if getattr(value, "backend_name", None) == device and isinstance(value, type):
            return value()
    raise LookupError(f"qiskit-ibm-runtime has no fake device {device}")


def simulator(device: str) -> Any:
    """The noisy simulator of `device`, built on first use in this process."""
    found = _simulators.get(device)
    if found is None:
        from qiskit_aer import AerSimulator

        found = AerSimulator.from_backend(fake_backend(device), **_options)
        _simulators[device] = found
    return found


def pass_manager(device: str, seed: int) -> PassManager:
    """The preset pass manager (optimisation level 1) for `device` with `seed_transpiler`."""
    key = (device, seed)
    found = _pass_managers.get(key)
    if found is None:
        from qiskit.transpiler import generate_preset_pass_manager

        found = generate_preset_pass_manager(
            optimization_level=1, backend=simulator(device), seed_transpiler=seed
        )
        _pass_managers[key] = found
        while len(_pass_managers) > _PASS_MANAGERS_KEPT:
            _pass_managers.popitem(last=False)
    else:
        _pass_managers.move_to_end(key)
    return found


def noise_for(device: str, circuit: QuantumCircuit) -> Any:
    """The device's noise model restricted to the qubits `circuit` acts on; the full model
    when this Aer keeps its errors differently than this was written for."""
    full = simulator(device).options.noise_model
    used = frozenset(
        circuit.find_bit(qubit).index for item in circuit.data for qubit in item.qubits
    )
    key = (device, used)
    found = _noise_models.get(key)
    if found is None:
        found = _restrict(full, used)
        _noise_models[key] = found
        while len(_noise_models) > _NOISE_MODELS_KEPT:
            _noise_models.popitem(last=False)
    else:
        _noise_models.move_to_end(key)
    return found


def used_qubits(circuit: QuantumCircuit) -> frozenset[int]:
    """The physical qubits some instruction of a transpiled circuit acts on."""
    return frozenset(circuit.find_bit(q).index for item in circuit.data for q in item.qubits)


def _restrict(full: Any, used: frozenset[int]) -> Any:
    from qiskit_aer.noise import NoiseModel

    try:
        cut = NoiseModel(basis_gates=sorted(full.basis_gates))
        cut._noise_instructions = set(full._noise_instructions)
        cut._noise_qubits = {qubit for qubit in full._noise_qubits if qubit in used}
        for gate, errors in full._local_quantum_errors.items():
            kept = {qubits: e for qubits, e in errors.items() if set(qubits) <= used}
            if kept:
                cut._local_quantum_errors[gate] = kept
        cut._local_readout_errors = {
            qubits: e for qubits, e in full._local_readout_errors.items() if set(qubits) <= used
        }
        cut._default_quantum_errors = dict(full._default_quantum_errors)
        cut._default_readout_error = full._default_readout_error
        cut._custom_noise_passes = list(full._custom_noise_passes)
    except AttributeError:  # another Aer's internals: correct, only slower
        return full
    return cut


def run_items(items: list[RunItem], device: str) -> list[RunOutcome]:
    """Transpile each item for `device` and run it with the device's noise; a failure of one
    item (a circuit that cannot be transpiled for the device) is reported on that item alone."""
    outcomes: dict[str, RunOutcome] = {}
    # Unseeded circuits on the same qubits share one call (and one noise model), those asking
    # for per-shot memory apart from those that do not.
    unseeded: dict[tuple[int, frozenset[int], bool], list[tuple[RunItem, QuantumCircuit]]]
    unseeded = defaultdict(list)
    try:
        sim = simulator(device)
    except Exception as exc:
        error = f"The simulator of {device} could not be built: {exc}"
        return [RunOutcome(item.task_id, error=error) for item in items]
    for item in items:
        seed = UNSEEDED_TRANSPILE_SEED if item.seed is None else item.seed
        try:
            circuit = pass_manager(device, seed).run(load_circuit(item))
        except Exception as exc:  # the task ends in error with the transpiler's reason
            error = f"The circuit cannot be transpiled for {device}: {exc}"
            outcomes[item.task_id] = RunOutcome(item.task_id, error=error)
            continue
        if item.seed is None:
            unseeded[(item.shots, used_qubits(circuit), item.memory)].append((item, circuit))
        else:  # one call per seed, so its counts do not depend on its neighbours
            noise = noise_for(device, circuit)
            [outcomes[item.task_id]] = _run(
                sim, [(item, circuit)], item.shots, item.seed, noise, item.memory
            )
    for (shots, _, memory), group in unseeded.items():
        noise = noise_for(device, group[0][1])
        for outcome in _run(sim, group, shots, None, noise, memory):
            outcomes[outcome.task_id] = outcome
    return [outcomes[item.task_id] for item in items]


def _run(
    sim: Any,
    group: list[tuple[RunItem, QuantumCircuit]],
    shots: int,
    seed: int | None,
    noise: Any,
    memory: bool = False,
) -> list[RunOutcome]:
    started = time.perf_counter()
    options: dict[str, Any] = {"shots": shots, "noise_model": noise}
    if seed is not None:
        options["seed_simulator"] = seed
    if memory:
        options["memory"] = True
    try:
        result = sim.run([circuit for _, circuit in group], **options).result()
    except Exception as exc:
        if len(group) > 1:
            return [o for pair in group for o in _run(sim, [pair], shots, seed, noise, memory)]
        return [RunOutcome(group[0][0].task_id, error=f"The simulator failed: {exc}")]
    elapsed = (time.perf_counter() - started) / len(group)
    outcomes = []
    for index, (item, _) in enumerate(group):
        experiment = result.results[index] if index < len(result.results) else None
        method = None if experiment is None else experiment.metadata.get("method")
        if experiment is None or not experiment.success:
            status = getattr(experiment, "status", "") or getattr(result, "status", "")
            error = f"The simulator failed: {status or 'unknown error'}"
            outcomes.append(RunOutcome(item.task_id, error=error, method=method))
            continue
        counts = {str(key): int(value) for key, value in result.get_counts(index).items()}
        shots_seen = [str(bits) for bits in result.get_memory(index)] if memory else None
        outcomes.append(
            RunOutcome(
                item.task_id, counts=counts, seconds=elapsed, method=method, memory=shots_seen
            )
        )
    return outcomes
