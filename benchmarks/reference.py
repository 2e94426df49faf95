"""The bare-Qiskit reference: the same circuits run in one process with no service around them.

Parses every source with `qiskit.qasm3.loads_experimental` (the native importer qtask uses) and
runs them all in one batched `AerSimulator.run(circuits, shots=1024)` call, timed from the first
parse to the last counts (and its CPU time, from getrusage). Small circuits get
`max_parallel_experiments` = number of cores; large ones (statevectors of 20+ qubits) keep
Aer's default settings, which parallelise each circuit.

With `sequential`, each circuit is parsed and run alone (one `run` call each), the bare-Aer
counterpart of the one-task-at-a-time latency row; per-circuit seconds are returned too.

`run.py` calls `measure()` in a subprocess so the reference's memory and threads never share a
process with the load generator, and it never runs while a server is up. As a script it reads a
JSON list of sources from the file named on the command line and prints one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

SHOTS = 1024


def measure(sources: list[str], large: bool, sequential: bool = False) -> dict[str, Any]:
    """Parse and run `sources` in this process; return timings in seconds."""
    from qiskit import qasm3
    from qiskit.circuit import QuantumCircuit
    from qiskit.exceptions import ExperimentalWarning
    from qiskit_aer import AerSimulator

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    cores = os.cpu_count() or 1
    simulator = AerSimulator() if large else AerSimulator(max_parallel_experiments=cores)
    probe = QuantumCircuit(1, 1)  # load Aer's native code before the clock starts
    probe.measure(0, 0)
    simulator.run(probe, shots=1).result()

    if sequential:
        latencies = []
        for source in sources:
            started = time.perf_counter()
            circuit = qasm3.loads_experimental(source, include_path=[])
            simulator.run(circuit, shots=SHOTS).result().get_counts()
            latencies.append(time.perf_counter() - started)
        return {"tasks": len(sources), "total_s": sum(latencies), "latencies": latencies}

    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    circuits = [qasm3.loads_experimental(source, include_path=[]) for source in sources]
    parsed = time.perf_counter()
    result = simulator.run(circuits, shots=SHOTS).result()
    counts = [result.get_counts(index) for index in range(len(circuits))]
    finished = time.perf_counter()
    cpu_s = _cpu_seconds() - cpu_before
    if not result.success or len(counts) != len(sources):
        raise RuntimeError(f"bare Aer failed: {result.status}")
    return {
        "tasks": len(sources),
        "parse_s": parsed - started,
        "run_s": finished - parsed,
        "total_s": finished - started,
        "cpu_s": cpu_s,
    }


def _cpu_seconds() -> float:
    """User + system CPU of this process, every thread (Aer's OpenMP ones) included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_in_subprocess(
    sources: list[str], large: bool, workdir: Path, timeout: float, sequential: bool = False
) -> dict[str, Any] | None:
    """Run `measure` in a fresh interpreter; None (with a note on stderr) if it fails."""
    path = workdir / "reference-input.json"
    path.write_text(json.dumps({"sources": sources, "large": large, "sequential": sequential}))
    try:
        done = subprocess.run(
            [sys.executable, __file__, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"bare-Aer reference timed out after {timeout:.0f} s", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"bare-Aer reference failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Read the sources from argv[1]; print the timings as one JSON line."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(measure(spec["sources"], spec["large"], spec["sequential"])))


if __name__ == "__main__":
    main()
