"""Run circuits on Aer with an IBM device's noise, inside a worker child process.

Each device's simulator (`AerSimulator.from_backend(Fake...(), noise_model=None)`: its target,
no noise) is built on the first task that names it in this process and then reused; so is a
preset pass manager (optimisation level 1, ~3–20 ms to build) per transpiler seed, a few of them
at once. Nothing here runs at process start, so a worker starts as fast with devices configured
as without.

Noise: each run passes Aer the device's noise model for the physical qubits the transpiled
circuit uses (`DeviceNoise`), kept per set of qubits. Each instruction's error is built once per
process, when the first circuit on its qubits comes. Errors on qubits no instruction touches
never apply, so the counts equal a direct run on the whole model (the integration test compares
them, and a unit test compares the models). `AerSimulator.from_backend` builds every qubit's
errors, and Aer serialises the whole model on every call (~1.2 s of a Bell run on 127 qubits,
3–5 s on 156); neither happens here. Measured (benchmarks/device_noise.py, 2026-12-02):
the whole model 4.5–4.8 s for fake_brisbane, 12.6 s for fake_fez; qtask's first Bell task on
them 0.33–0.38 and 0.57 s, an 8-qubit GHZ next 0.5–0.7 s, and the models of 60 random 2–6-qubit
circuits (23–27 sets of qubits) 1.8–2.1 s in all.

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
from qiskit.providers import BackendV2, Options
from qiskit.transpiler import PassManager, Target

from qtask.execution.aer import load_circuit
from qtask.execution.items import RunItem, RunOutcome

# Pass managers kept per process: one per (device, transpiler seed). A seeded workload with
# many seeds rebuilds them (cheap), a workload with few keeps them.
_PASS_MANAGERS_KEPT = 16
# The transpiler seed of tasks that have none.
UNSEEDED_TRANSPILE_SEED = 0

# Cut-down noise models kept per process, one per (device, set of physical qubits used).
_NOISE_MODELS_KEPT = 64

_fakes: dict[str, Any] = {}
_device_noises: dict[str, DeviceNoise] = {}
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


def _fake(device: str) -> Any:
    found = _fakes.get(device)
    if found is None:
        found = _fakes[device] = fake_backend(device)
    return found


def simulator(device: str) -> Any:
    """The simulator of `device`'s target, noiseless (each run brings its noise: `noise_for`),
    built on first use in this process."""
    found = _simulators.get(device)
    if found is None:
        from qiskit_aer import AerSimulator

        found = AerSimulator.from_backend(_fake(device), noise_model=None, **_options)
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
    """The device's noise model for the physical qubits the transpiled `circuit` acts on."""
    used = used_qubits(circuit)
    key = (device, used)
    found = _noise_models.get(key)
    if found is None:
        noise = _device_noises.get(device)
        if noise is None:
            noise = _device_noises[device] = DeviceNoise(_fake(device))
        found = _noise_models[key] = noise.model(used)
        while len(_noise_models) > _NOISE_MODELS_KEPT:
            _noise_models.popitem(last=False)
    else:
        _noise_models.move_to_end(key)
    return found


def used_qubits(circuit: QuantumCircuit) -> frozenset[int]:
    """The physical qubits some instruction of a transpiled circuit acts on."""
    return frozenset(circuit.find_bit(q).index for item in circuit.data for q in item.qubits)


class DeviceNoise:
    """A device's noise model, built one instruction at a time as circuits come to need it.

    `model(qubits)` is what `NoiseModel.from_backend(backend)` gives, restricted to the
    instructions on `qubits`: their errors (Aer's own `basic_device_gate_errors` and
    `basic_device_readout_errors`, each built from its instruction's and qubits' properties
    alone), the same basis gates and delay relaxation. Each instruction's error is built once,
    the first time a circuit on its qubits comes."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._gate_errors: dict[tuple[str, tuple[int, ...]], Any] = {}
        self._readout_errors: dict[int, Any] = {}
        self._built: set[tuple[str, tuple[int, ...]]] = set()  # some errors are None

    def model(self, qubits: frozenset[int]) -> Any:
        """The noise model of the instructions on `qubits`."""
        from qiskit_aer.noise import NoiseModel
        from qiskit_aer.noise.device import basic_device_gate_errors, basic_device_readout_errors

        missing = {
            (name, qargs)
            for name, properties in self._backend.target.items()
            for qargs in properties or ()
            if qargs is not None and qubits.issuperset(qargs) and (name, qargs) not in self._built
        }
        if missing:
            part = _Part(self._backend, missing).target
            for name, qargs, error in basic_device_gate_errors(target=part):
                self._gate_errors[name, tuple(qargs)] = error
            for (qubit,), error in basic_device_readout_errors(target=part):
                self._readout_errors[qubit] = error
            self._built |= missing
        # No instruction: the basis gates and the delays' relaxation, as from_backend sets them.
        model = NoiseModel.from_backend(_Part(self._backend, set()))
        for qubit in sorted(qubits & self._readout_errors.keys()):
            model.add_readout_error(self._readout_errors[qubit], [qubit])
        for (name, qargs), error in self._gate_errors.items():
            if qubits.issuperset(qargs):
                model.add_quantum_error(error, name, qargs)
        return model


class _Part(BackendV2):  # type: ignore[misc]  # qiskit has no type hints
    """A backend whose target is `backend`'s with only the instructions in `kept` ((name,
    qubits) pairs) and the variadic ones: every operation name, every qubit's properties, the
    same dt."""

    def __init__(self, backend: Any, kept: set[tuple[str, tuple[int, ...]]]) -> None:
        super().__init__(name=f"{backend.name}, {len(kept)} instructions")
        whole: Target = backend.target
        self._target = Target(
            num_qubits=whole.num_qubits, dt=whole.dt, qubit_properties=whole.qubit_properties
        )
        for name, properties in whole.items():
            operation = whole.operation_from_name(name)
            if isinstance(operation, type):  # variadic (control flow): on any qubits
                self._target.add_instruction(operation, name=name)
                continue
            self._target.add_instruction(
                operation,
                {q: value for q, value in (properties or {}).items() if (name, q) in kept},
                name=name,
            )

    @property
    def target(self) -> Target:
        return self._target

    @property
    def max_circuits(self) -> None:
        return None

    @classmethod
    def _default_options(cls) -> Options:
        return Options()

    def run(self, run_input: Any, **options: Any) -> Any:
        raise NotImplementedError("a noise model's source, not a backend to run on")


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
