"""Run the experiment: the same jobs in distributed mode and in the centralized baseline.

**Distributed** (the system under test): `qtask coordinator` + N `qtask node`s over libp2p;
each job is POSTed to the coordinator's job API and polled until COMPLETED or FAILED: discovery
from adverts, the planner, reservations, persistence, retries and fallback are all in the path.

**Centralized baseline**: one orchestrator (this process) with a *static* registry: the same
N nodes (same noise, same Aer, same shots and seeds), their addresses and measured fidelities
read once at start, ordered best first; each job is compiled here (`ir_from_qasm`, the
coordinator's own compiler) and sent with EXECUTE straight to the first node of the list, the
next one on an error or timeout (the same `max_attempts` and `execute_timeout_s` as the
coordinator). No discovery, pings, reservations, database or HTTP. Why it is fair: the quantum
work and the nodes are identical, so with healthy nodes both modes produce the same counts for
the same seed, and the latency difference is exactly the mesh's orchestration; under faults the
baseline still fails over, but only on errors, never on news (a degraded or slow node keeps
being chosen).

Scenarios: `clean` (no faults) and `faults` (the seeded schedule of `faults.schedule`); each
(scenario, mode) runs on a fresh cluster, so a dropped node in one run does not leak into the
next. Jobs run one at a time, in the plan's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from qtask.circuits.ingestor import limits_from
from qtask.config import LimitsSettings
from qtask.errors import QTaskError
from qtask.mesh.experiment.circuits import Benchmark, suite
from qtask.mesh.experiment.cluster import Cluster
from qtask.mesh.experiment.faults import Fault, FaultInjector, FaultKind, schedule
from qtask.mesh.experiment.options import Options
from qtask.mesh.host import MeshHost, call
from qtask.mesh.ir import ir_from_qasm
from qtask.mesh.protocol import EXECUTE_PROTOCOL, ExecuteReply, ExecuteRequest

MODES = ("distributed", "centralized")
_FINAL = ("COMPLETED", "FAILED")
_POLL_S = 0.005
_JOB_DEADLINE_S = 120.0


def make_plan(options: Options) -> dict[str, Any]:
    """Everything the seed decides: circuits, job order and seeds, node noise, fault schedule.

    Equal options give an equal plan (a test compares the JSON byte for byte)."""
    benchmarks = suite(options.seed, smoke=options.smoke)
    rng = random.Random(options.seed)
    jobs = [
        {"index": i, "circuit": b.name, "seed": rng.randrange(2**31)}
        for i, b in enumerate(b for _ in range(options.repeats) for b in benchmarks)
    ]
    kinds: tuple[FaultKind, ...] = tuple(options.faults)  # type: ignore[arg-type]
    faults = schedule(options.seed, len(jobs), kinds) if kinds else []
    return {
        "seed": options.seed,
        "nodes": options.node_noises(),
        "shots": options.shots,
        "execute_timeout_s": options.execute_timeout_s,
        "max_attempts": options.max_attempts,
        "circuits": [
            {
                "name": b.name,
                "family": b.family,
                "qubits": b.num_qubits,
                "operations": b.operations,
                "gates": b.gate_counts,
                "qasm_sha256": b.digest(),
            }
            for b in benchmarks
        ],
        "jobs": jobs,
        "scenarios": {"clean": [], "faults": [f.to_dict() for f in faults]}
        if faults
        else {"clean": []},
    }


def plan_json(plan: dict[str, Any]) -> bytes:
    """The plan's canonical JSON (sorted keys)."""
    return json.dumps(plan, sort_keys=True, indent=1).encode()


def estimate_fidelity(gates: dict[str, int], noise: dict[str, float]) -> float:
    """The harness's own prediction, used when the coordinator reports none: each gate keeps
    the state with probability (1 - p) of its depolarizing error, each readout (1 - r)."""
    one = sum(v for k, v in gates.items() if k not in ("cx", "cz", "swap", "measure", "barrier"))
    two = sum(v for k, v in gates.items() if k in ("cx", "cz", "swap"))
    return float(
        (1 - noise.get("depolarizing_1q", 0.0)) ** one
        * (1 - noise.get("depolarizing_2q", 0.0)) ** two
        * (1 - noise.get("readout", 0.0)) ** gates.get("measure", 0)
    )


def _predicted(body: dict[str, Any]) -> float | None:
    """The coordinator's predicted fidelity for a job, where its API reports one."""
    for holder in (body.get("metadata") or {}, body, body.get("plan") or {}):
        value = holder.get("est_fidelity") if isinstance(holder, dict) else None
        if isinstance(value, (int, float)):
            return float(value)
    return None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@contextlib.asynccontextmanager
async def _client_host(cluster: Cluster) -> AsyncIterator[MeshHost]:
    host = MeshHost(listen="/ip4/127.0.0.1/tcp/0")
    await host.start()
    try:
        for node in cluster.nodes:
            await host.connect(node.addr)
        yield host
    finally:
        await host.stop()


class Run:
    """One (scenario, mode) run on its own cluster."""

    def __init__(
        self,
        options: Options,
        plan: dict[str, Any],
        benchmarks: dict[str, Benchmark],
        scenario: str,
        mode: str,
        directory: Path,
    ) -> None:
        self.options, self.plan, self.benchmarks = options, plan, benchmarks
        self.scenario, self.mode, self.directory = scenario, mode, directory
        self.faults = [Fault(**f) for f in plan["scenarios"][scenario]]
        self.results: list[dict[str, Any]] = []
        self.fault_events: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}
        self.noise_of: dict[str, dict[str, float]] = {}
        self.setup_s = 0.0

    async def execute(self) -> None:
        started = time.perf_counter()
        cluster = Cluster(
            self.directory,
            self.plan["nodes"],
            coordinator=self.mode == "distributed",
            coordinator_env={
                "QTASK_MESH__COORDINATOR__EXECUTE_TIMEOUT_S": str(self.options.execute_timeout_s),
                "QTASK_MESH__COORDINATOR__MAX_ATTEMPTS": str(self.options.max_attempts),
            },
        )
        await asyncio.to_thread(cluster.start)
        try:
            self.names = {n.peer_id: n.name for n in cluster.nodes}
            self.noise_of = {
                n.peer_id: noise for n, noise in zip(cluster.nodes, self.plan["nodes"], strict=True)
            }
            async with _client_host(cluster) as host:
                injector = FaultInjector(host, cluster.nodes, self.faults)
                if self.mode == "distributed":
                    await self._wait_listed(cluster)
                    self.setup_s = time.perf_counter() - started
                    await self._distributed(cluster, injector)
                else:
                    self.setup_s = time.perf_counter() - started
                    await self._centralized(cluster, host, injector)
                await injector.clear_all(len(self.plan["jobs"]), time.perf_counter() - started)
                self.fault_events = injector.events
            if cluster.coordinator is not None:
                self._add_compile_times(cluster.coordinator.lines())
            self._add_node_times([line for node in cluster.nodes for line in node.lines()])
        finally:
            await asyncio.to_thread(cluster.close)

    def _record(self, job: dict[str, Any], bench: Benchmark, **fields: Any) -> dict[str, Any]:
        counts: dict[str, int] = fields.pop("counts", None) or {}
        row = {
            "scenario": self.scenario, "mode": self.mode, "index": job["index"],
            "circuit": bench.name, "family": bench.family, "seed": job["seed"],
            "shots": sum(counts.values()), "fidelity": bench.score(counts) if counts else None,
            "counts": counts, **fields,
        }  # fmt: skip
        self.results.append(row)
        return row

    async def _wait_listed(self, cluster: Cluster, timeout: float = 60.0) -> None:
        """Until the coordinator lists every node available (it has heard their adverts)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as http:
            while True:
                listed = (await http.get("/api/v1/nodes", params={"available": "true"})).json()
                if len(listed["nodes"]) >= len(cluster.nodes):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the coordinator lists {listed} after {timeout} s")
                await asyncio.sleep(0.1)

    async def _distributed(self, cluster: Cluster, injector: FaultInjector) -> None:
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
            for job in self.plan["jobs"]:
                bench = self.benchmarks[job["circuit"]]
                await injector.before_job(job["index"], time.perf_counter() - t0)
                start = time.perf_counter()
                reply = await http.post(
                    "/api/v1/circuits/submit",
                    json={"qasm": bench.qasm, "shots": self.options.shots, "seed": job["seed"]},
                )
                reply.raise_for_status()
                job_id = reply.json()["job_id"]
                body: dict[str, Any] = {}
                deadline = start + _JOB_DEADLINE_S
                while time.perf_counter() < deadline:
                    body = (await http.get(f"/api/v1/jobs/{job_id}")).json()
                    if body["state"] in _FINAL:
                        break
                    await asyncio.sleep(_POLL_S)
                e2e = time.perf_counter() - start
                fragments = body.get("fragments", [])
                stages = (body.get("metadata") or {}).get("stages") or {}
                compile_ms = None
                if "compile_ms" in stages:  # mesh part 2: compile + plan, timed by the runtime
                    compile_ms = float(stages["compile_ms"]) + float(stages.get("plan_ms", 0.0))
                done = [f for f in fragments if f.get("status") == "completed"]
                node = done[-1]["node"] if done else None
                predicted, source = _predicted(body), "coordinator"
                if predicted is None and node is not None:
                    predicted, source = (
                        estimate_fidelity(bench.gate_counts, self.noise_of[node]),
                        "harness",
                    )
                self._record(
                    job, bench, ok=body.get("state") == "COMPLETED", job_id=job_id,
                    state=body.get("state"), error=body.get("error"), e2e_ms=e2e * 1000,
                    compile_ms=compile_ms, predicted=predicted, predicted_source=source,
                    node=self.names.get(node or "", node), attempts=len(fragments),
                    failed_attempts=sum(1 for f in fragments if f.get("status") != "completed"),
                    tried=[self.names.get(f["node"], f["node"]) for f in fragments],
                    t_s=start - t0, counts=body.get("counts"), fragments=fragments,
                )  # fmt: skip

    async def _centralized(self, cluster: Cluster, host: MeshHost, injector: FaultInjector) -> None:
        limits = limits_from(LimitsSettings())
        static = sorted(cluster.nodes, key=lambda n: (-float(n.ready.get("fidelity", 0)), n.name))
        # A long-running orchestrator has its compiler warm (the coordinator's is, after its
        # first job): the OpenQASM 3 parser's lazy imports are not a job's compile time.
        ir_from_qasm(next(iter(self.benchmarks.values())).qasm, limits)
        t0 = time.perf_counter()
        for job in self.plan["jobs"]:
            bench = self.benchmarks[job["circuit"]]
            await injector.before_job(job["index"], time.perf_counter() - t0)
            start = time.perf_counter()
            circuit = ir_from_qasm(bench.qasm, limits)
            chosen = static[0]
            compiled = time.perf_counter()
            counts, tried, errors, node = None, [], [], None
            for attempt in range(self.options.max_attempts):
                chosen = static[attempt % len(static)]
                tried.append(chosen.name)
                request = ExecuteRequest(
                    correlation_id=uuid.uuid4().hex, job_id=f"baseline-{job['index']}",
                    fragment_id=f"baseline-{job['index']}.f0", circuit=circuit,
                    shots=self.options.shots, seed=job["seed"],
                )  # fmt: skip
                try:
                    reply = await call(host, chosen.peer_id, EXECUTE_PROTOCOL, request,
                                       ExecuteReply, self.options.execute_timeout_s)  # fmt: skip
                except QTaskError as exc:
                    errors.append(f"{chosen.name}: {exc}")
                    continue
                if reply.ok and reply.counts is not None:
                    counts, node = reply.counts, chosen
                    break
                errors.append(f"{chosen.name}: {reply.error}")
            end = time.perf_counter()
            noise = self.noise_of[node.peer_id] if node else None
            self._record(
                job, bench, ok=counts is not None, job_id=f"baseline-{job['index']}",
                state="COMPLETED" if counts is not None else "FAILED",
                error="; ".join(errors) or None, e2e_ms=(end - start) * 1000,
                compile_ms=(compiled - start) * 1000,
                predicted=estimate_fidelity(bench.gate_counts, noise) if noise else None,
                predicted_source="harness", node=node.name if node else None,
                attempts=len(tried), failed_attempts=len(errors), tried=tried, t_s=start - t0,
                counts=counts,
            )  # fmt: skip

    def _add_node_times(self, lines: list[dict[str, Any]]) -> None:
        """Each job's simulation time (the nodes' `fragment_executed` run_s, every attempt),
        and the orchestration overhead: end-to-end minus that."""
        run_s: dict[str, float] = {}
        for entry in lines:
            if entry.get("event") == "fragment_executed" and entry.get("job_id"):
                job_id = str(entry["job_id"])
                run_s[job_id] = run_s.get(job_id, 0.0) + float(entry.get("run_s", 0.0))
        for row in self.results:
            if row["job_id"] in run_s:
                row["node_run_ms"] = run_s[row["job_id"]] * 1000
                row["overhead_ms"] = row["e2e_ms"] - row["node_run_ms"]

    def _add_compile_times(self, lines: list[dict[str, Any]]) -> None:
        """Compile time of each distributed job: its COMPILING -> RESERVING in the coordinator's
        log (OpenQASM to IR and the plan)."""
        states: dict[str, dict[str, float]] = {}
        for entry in lines:
            if entry.get("event") != "mesh_job_state" or "job_id" not in entry:
                continue
            seen = states.setdefault(entry["job_id"], {})
            stamp = datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00"))
            seen.setdefault(str(entry.get("state")), stamp.timestamp())
        for row in self.results:
            seen = states.get(row["job_id"], {})
            if row["compile_ms"] is None and "COMPILING" in seen and "RESERVING" in seen:
                row["compile_ms"] = (seen["RESERVING"] - seen["COMPILING"]) * 1000


async def run_all(options: Options, work: Path) -> dict[str, Any]:
    """Every (scenario, mode) run of the plan; the raw results."""
    plan = make_plan(options)
    benchmarks = {b.name: b for b in suite(options.seed, smoke=options.smoke)}
    runs: list[dict[str, Any]] = []
    for scenario in plan["scenarios"]:
        for mode in MODES:
            run = Run(options, plan, benchmarks, scenario, mode, work / f"{scenario}-{mode}")
            began = time.perf_counter()
            await run.execute()
            runs.append({
                "scenario": scenario, "mode": mode, "setup_s": run.setup_s,
                "wall_s": time.perf_counter() - began, "jobs": run.results,
                "fault_events": run.fault_events,
            })  # fmt: skip
    return {"plan": plan, "runs": runs}


def run_experiment(options: Options, work: Path | None = None) -> Path:
    """Run it and write the report folder; returns the folder."""
    from qtask.mesh.experiment.report import write_report

    with tempfile.TemporaryDirectory(prefix="qtask-experiment-") as temp:
        raw = asyncio.run(run_all(options, work or options.work or Path(temp)))
    return write_report(raw, options.out)
