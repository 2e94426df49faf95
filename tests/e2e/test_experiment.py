"""FR-013's harness at its smallest size (`qtask experiment --smoke`): a coordinator and two
`qtask node` processes on loopback, the smoke circuits in distributed mode and in the
centralized baseline, clean and with faults (a latency spike through the node's fault layer,
then a node SIGKILLed); the report folder is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qtask.mesh.experiment.harness import make_plan, plan_json
from qtask.mesh.experiment.options import smoke
from qtask.mesh.experiment.report import PLOTS


def test_the_smoke_experiment_runs_both_modes_and_writes_a_complete_report(tmp_path: Path) -> None:
    options = smoke(tmp_path / "report", seed=5)
    out = options.out
    command = [sys.executable, "-m", "qtask", "experiment", "--smoke", "--seed", "5",
               "--out", str(out), "--work", str(tmp_path / "work")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"report: {out / 'report.md'}")

    for name in ("report.md", "results.json", "plan.json", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    assert (out / "plan.json").read_bytes() == plan_json(make_plan(options))

    raw = json.loads((out / "results.json").read_text())
    runs = {(run["scenario"], run["mode"]): run for run in raw["runs"]}
    assert set(runs) == {
        (s, m) for s in ("clean", "faults") for m in ("distributed", "centralized")
    }
    jobs = len(raw["plan"]["jobs"])
    for (scenario, mode), run in runs.items():
        assert len(run["jobs"]) == jobs, (scenario, mode)
        for job in run["jobs"]:
            # A second node exists, so the dropped one is survived in both modes.
            assert job["state"] == "COMPLETED", (scenario, mode, job)
            assert sum(job["counts"].values()) == options.shots
            assert job["fidelity"] > 0.6, job

    # Same node, same noise, same seed: the baseline's counts are the mesh's, exactly.
    same = [
        (d, c)
        for d, c in zip(
            runs["clean", "distributed"]["jobs"], runs["clean", "centralized"]["jobs"], strict=True
        )
        if d["node"] == c["node"]
    ]
    assert same
    assert all(d["counts"] == c["counts"] for d, c in same)

    for mode in ("distributed", "centralized"):
        events = runs["faults", mode]["fault_events"]
        assert [(e["kind"], e["action"], e["node"], e["applied"]) for e in events] == [
            ("latency", "set", "n0", True),
            ("latency", "clear", "n0", True),
            ("kill", "set", "n0", True),
        ]
    # The static baseline keeps asking the dropped node first: every later job fell back.
    kill_at = raw["plan"]["scenarios"]["faults"][-1]["at_job"]
    for job in runs["faults", "centralized"]["jobs"][kill_at:]:
        assert job["tried"] == ["n0", "n1"]
    # The mesh stops choosing it once it has noticed the drop.
    assert runs["faults", "distributed"]["jobs"][-1]["tried"] == ["n1"]

    report = (out / "report.md").read_text()
    for scenario in ("clean", "faults"):
        for mode in ("distributed", "centralized"):
            assert f"| {scenario} | {mode} | {jobs} | {jobs}/{jobs} (100 %) |" in report
