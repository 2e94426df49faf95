"""The experiment's pure parts (FR-013): benchmark circuits and their scoring, the seeded plan
and fault schedule, the fidelity estimate and the report's summary."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtask.circuits.ingestor import limits_from
from qtask.config import LimitsSettings
from qtask.mesh.config import DEFAULT_GATES
from qtask.mesh.experiment.circuits import MAX_OPERATIONS, ghz, suite
from qtask.mesh.experiment.faults import KINDS, schedule
from qtask.mesh.experiment.harness import estimate_fidelity, make_plan, percentile, plan_json
from qtask.mesh.experiment.options import Options
from qtask.mesh.experiment.report import markdown, summarize
from qtask.mesh.ir import ir_from_qasm


def test_every_benchmark_is_small_exact_and_runs_on_a_default_node() -> None:
    limits = limits_from(LimitsSettings())
    for bench in suite(7):
        assert bench.operations <= MAX_OPERATIONS
        assert math.isclose(sum(bench.ideal.values()), 1.0, abs_tol=1e-9)
        used = {i.name for i in ir_from_qasm(bench.qasm, limits).instructions}
        assert used <= set(DEFAULT_GATES), (bench.name, used - set(DEFAULT_GATES))
    assert {b.family for b in suite(7)} == {"ghz", "qft", "qaoa", "random"}


def test_the_inverse_qft_returns_its_integer_exactly() -> None:
    qft = next(b for b in suite(7) if b.name == "qft4")
    assert len(qft.ideal) == 1
    assert math.isclose(next(iter(qft.ideal.values())), 1.0)


def test_ideal_counts_score_one_and_wrong_counts_score_less() -> None:
    bench = suite(7)[0]  # ghz3
    assert bench.score({"000": 500, "111": 500}) == pytest.approx(1.0)
    assert bench.score({"000": 500, "011": 500}) == pytest.approx(0.25)  # (1 - H^2)^2
    assert bench.score({"010": 1000}) == pytest.approx(0.0)
    assert ghz(3).num_qubits == 3


def test_the_same_options_give_a_byte_identical_plan_and_another_seed_another() -> None:
    first = plan_json(make_plan(Options(seed=11)))
    assert plan_json(make_plan(Options(seed=11))) == first
    assert plan_json(make_plan(Options(seed=12))) != first


@given(seed=st.integers(0, 2**31), jobs=st.integers(8, 60))
def test_a_schedule_puts_each_fault_in_its_own_slice_and_clears_all_but_the_kill(
    seed: int, jobs: int
) -> None:
    faults = schedule(seed, jobs)
    assert [f.kind for f in faults] == list(KINDS)
    assert schedule(seed, jobs) == faults
    size = jobs // len(KINDS)
    for i, fault in enumerate(faults):
        assert i * size <= fault.at_job < (i + 1) * size
        if fault.kind == "kill":
            assert fault.until_job is None
        else:
            assert fault.until_job == (i + 1) * size > fault.at_job


def test_a_schedule_refuses_too_few_jobs() -> None:
    with pytest.raises(ValueError, match="too few"):
        schedule(1, 5)


def test_the_estimate_falls_with_noise_and_gates() -> None:
    gates = {"h": 1, "cx": 2, "measure": 3}
    ideal = estimate_fidelity(gates, {})
    low = estimate_fidelity(gates, {"depolarizing_1q": 0.001, "depolarizing_2q": 0.01})
    high = estimate_fidelity(gates, {"depolarizing_1q": 0.01, "depolarizing_2q": 0.1})
    assert ideal == 1.0 > low > high
    assert estimate_fidelity({**gates, "cx": 4}, {"depolarizing_2q": 0.01}) < low


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert math.isnan(percentile([], 50))


def test_the_summary_counts_successes_fallbacks_and_the_markdown_shows_them() -> None:
    plan = make_plan(Options(seed=3, smoke=True, repeats=2, faults=("kill",), nodes=2))
    job = {
        "index": 0, "circuit": "ghz3", "family": "ghz", "ok": True, "e2e_ms": 20.0,
        "compile_ms": 2.0, "fidelity": 0.98, "predicted": 0.97, "predicted_source": "harness",
        "attempts": 2, "failed_attempts": 1, "tried": ["n0", "n1"], "node": "n1",
        "state": "COMPLETED", "counts": {"000": 250, "111": 250}, "shots": 500,
    }  # fmt: skip
    failed = {**job, "index": 1, "ok": False, "state": "FAILED", "fidelity": None,
              "attempts": 1, "failed_attempts": 1, "counts": {}, "shots": 0}  # fmt: skip
    run = {"scenario": "faults", "mode": "centralized", "setup_s": 1.0, "wall_s": 2.0,
           "jobs": [job, failed], "fault_events": []}  # fmt: skip
    summary = summarize(run)
    assert summary["completed"] == 1
    assert summary["success_rate"] == 0.5
    assert summary["fallbacks"] == 1
    assert summary["fidelity_mean"] == 0.98
    text = markdown({"plan": plan, "runs": [run]}, [summary])
    assert "| faults | centralized | 2 | 1/2 (50 %) |" in text
    assert "n0 > n1" in text
