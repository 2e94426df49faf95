"""A noisy device's first tasks: qtask's noise models built per set of qubits, against Aer's
whole device model.

    .venv/bin/python benchmarks/device_noise.py [--devices fake_brisbane fake_fez]

Each measurement runs in a fresh process (imports done before the clock starts), as a worker
child meets its first task:
- Aer's whole model: `AerSimulator.from_backend(fake)`, what a direct Qiskit user pays once per
  process (and what a worker paid on its first task of a device before DeviceNoise);
- qtask: `execution.devices.run_items` of a Bell task, then a second Bell and an 8-qubit GHZ
  (new qubits), all seeded, each timed whole (transpile, noise model, run);
- 60 random 2–6-qubit circuits (qiskit's `random_circuit`, half of them seeded), transpiled
  first: the time to build all their noise models, and how many sets of qubits they use.
Prints a markdown table; asserts nothing on time.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from qtask_testkit import BELL, ghz, run_item  # noqa: E402


def whole(device: str) -> dict[str, Any]:
    """Aer's whole device model, as `AerSimulator.from_backend` builds it."""
    from qiskit_aer import AerSimulator

    from qtask.execution import devices

    fake = devices.fake_backend(device)
    started = time.perf_counter()
    AerSimulator.from_backend(fake)
    return {"whole_s": time.perf_counter() - started}


def tasks(device: str) -> dict[str, Any]:
    """qtask's first Bell task, a second one, then an 8-qubit GHZ."""
    sys.path.insert(0, str(ROOT / "tests"))
    import qiskit_aer  # noqa: F401  # imported before the clock, as in a started worker
    import qiskit_ibm_runtime.fake_provider  # noqa: F401

    from qtask.circuits.ingest import Limits
    from qtask.execution import devices

    limits = Limits(
        max_circuit_bytes=1 << 16,
        max_qubits=200,
        max_operations=1000,
        max_statevector_bytes=1 << 28,
    )
    times = []
    for index, (source, seed) in enumerate([(BELL, 1), (BELL, 2), (ghz(8), 3)]):
        started = time.perf_counter()
        [outcome] = devices.run_items([run_item(f"t{index}", source, limits, 1000, seed)], device)
        times.append(time.perf_counter() - started)
        assert outcome.error is None, outcome.error
    return {"bell_1_s": times[0], "bell_2_s": times[1], "ghz8_s": times[2]}


def random_models(device: str) -> dict[str, Any]:
    """The noise models of 60 random transpiled circuits."""
    from qiskit.circuit.random import random_circuit

    from qtask.execution import devices

    circuits = []
    for index in range(60):
        width = random.Random(index).randint(2, 6)
        qc = random_circuit(width, 4, max_operands=2, measure=True, seed=index)
        seed = index if index % 2 else devices.UNSEEDED_TRANSPILE_SEED
        circuits.append(devices.pass_manager(device, seed).run(qc))
    started = time.perf_counter()
    for circuit in circuits:
        devices.noise_for(device, circuit)
    return {
        "random_s": time.perf_counter() - started,
        "sets": len({devices.used_qubits(c) for c in circuits}),
    }


MEASURES = {"whole": whole, "tasks": tasks, "random": random_models}


def fresh(measure: str, device: str) -> dict[str, Any]:
    """One measurement in a new process."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", measure, device],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", nargs="+", default=["fake_brisbane", "fake_fez"])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure, device = args.one
        print(json.dumps(MEASURES[measure](device)))
        return
    print(f"# A noisy device's first tasks ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print("| device | Aer's whole model | qtask: 1st Bell | 2nd Bell | 8-qubit GHZ "
          "| 60 random circuits' models (sets of qubits) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for device in args.devices:
        found = {**fresh("whole", device), **fresh("tasks", device), **fresh("random", device)}
        print(
            f"| {device} | {found['whole_s']:.2f} s | {found['bell_1_s']:.2f} s "
            f"| {found['bell_2_s'] * 1000:.0f} ms | {found['ghz8_s']:.2f} s "
            f"| {found['random_s']:.2f} s ({found['sets']}) |"
        )


if __name__ == "__main__":
    main()
