"""The experiment's report folder: `results.json` (raw: plan and every job), `plan.json` (the
seeded plan alone, byte-identical for the same options), `report.md` (tables) and PNG plots
(matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from qtask.mesh.experiment.harness import MODES, percentile, plan_json

PLOTS = ("latency_by_circuit.png", "fidelity_measured_vs_predicted.png", "faults_timeline.png")


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """One run's metrics: success rate, compile and end-to-end percentiles, fidelities."""
    jobs = run["jobs"]
    ok = [j for j in jobs if j["ok"]]
    compile_ms = [j["compile_ms"] for j in jobs if j.get("compile_ms") is not None]
    e2e = [j["e2e_ms"] for j in ok]
    overhead = [j["overhead_ms"] for j in ok if j.get("overhead_ms") is not None]
    fid = [j["fidelity"] for j in ok if j["fidelity"] is not None]
    pred = [j["predicted"] for j in ok if j.get("predicted") is not None]
    return {
        "scenario": run["scenario"],
        "mode": run["mode"],
        "jobs": len(jobs),
        "completed": len(ok),
        "success_rate": len(ok) / len(jobs) if jobs else math.nan,
        "compile_p50_ms": percentile(compile_ms, 50),
        "compile_p95_ms": percentile(compile_ms, 95),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p95_ms": percentile(e2e, 95),
        "overhead_p50_ms": percentile(overhead, 50),
        "overhead_p95_ms": percentile(overhead, 95),
        "fidelity_mean": statistics.fmean(fid) if fid else math.nan,
        "predicted_mean": statistics.fmean(pred) if pred else math.nan,
        # Jobs completed after a failed attempt (on another node, or a retry).
        "fallbacks": sum(1 for j in ok if j.get("failed_attempts", 0) > 0),
        "setup_s": run["setup_s"],
        "wall_s": run["wall_s"],
    }


def markdown(raw: dict[str, Any], summaries: list[dict[str, Any]]) -> str:
    plan = raw["plan"]
    lines = [
        "# qtask mesh experiment",
        "",
        f"Seed {plan['seed']}, {len(plan['nodes'])} nodes, {plan['shots']} shots per job, "
        f"{len(plan['jobs'])} jobs per run ({len(plan['circuits'])} circuits), "
        f"execute timeout {plan['execute_timeout_s']} s, {plan['max_attempts']} attempts. "
        "Fidelity: Hellinger fidelity of the counts against the ideal statevector's "
        "probabilities; predicted: the coordinator's estimate where its API gives one, else the "
        "harness's gate-count estimate from the chosen node's noise (`predicted_source` in "
        "results.json). End-to-end: submit to final state as the client sees it; overhead: "
        "end-to-end minus the nodes' own simulation time (`run_s` in their "
        "`fragment_executed` log lines), i.e. everything the orchestration adds.",
        "",
        "## Summary",
        "",
        "| scenario | mode | jobs | success | compile p50 / p95 ms | end-to-end p50 / p95 ms "
        "| overhead p50 / p95 ms | fidelity (measured) | fidelity (predicted) "
        "| completed after a failed attempt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['scenario']} | {s['mode']} | {s['jobs']} | "
            f"{s['completed']}/{s['jobs']} ({100 * s['success_rate']:.0f} %) | "
            f"{_fmt(s['compile_p50_ms'])} / {_fmt(s['compile_p95_ms'])} | "
            f"{_fmt(s['e2e_p50_ms'])} / {_fmt(s['e2e_p95_ms'])} | "
            f"{_fmt(s['overhead_p50_ms'])} / {_fmt(s['overhead_p95_ms'])} | "
            f"{_fmt(s['fidelity_mean'], 4)} | {_fmt(s['predicted_mean'], 4)} | {s['fallbacks']} |"
        )
    lines += ["", "## Nodes", "", "| node | depolarizing 1q | depolarizing 2q | readout |",
              "|---|---|---|---|"]  # fmt: skip
    for i, noise in enumerate(plan["nodes"]):
        p1, p2, r = noise["depolarizing_1q"], noise["depolarizing_2q"], noise["readout"]
        lines.append(f"| n{i} | {p1} | {p2} | {r} |")
    lines += ["", "## Per circuit (clean scenario)", "",
              "| circuit | qubits | ops | mode | fidelity | predicted | end-to-end p50 ms | node |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    circuits = {c["name"]: c for c in plan["circuits"]}
    for name, circuit in circuits.items():
        for run in raw["runs"]:
            if run["scenario"] != "clean":
                continue
            jobs = [j for j in run["jobs"] if j["circuit"] == name and j["ok"]]
            fid = [j["fidelity"] for j in jobs]
            pred = [j["predicted"] for j in jobs if j["predicted"] is not None]
            nodes = sorted({str(j["node"]) for j in jobs})
            lines.append(
                f"| {name} | {circuit['qubits']} | {circuit['operations']} | {run['mode']} | "
                f"{_fmt(statistics.fmean(fid) if fid else None, 4)} | "
                f"{_fmt(statistics.fmean(pred) if pred else None, 4)} | "
                f"{_fmt(percentile([j['e2e_ms'] for j in jobs], 50))} | {', '.join(nodes)} |"
            )
    fault_runs = [r for r in raw["runs"] if r["scenario"] == "faults"]
    if fault_runs:
        lines += ["", "## Faults", "", "Schedule (job index = when, before that job starts):", ""]
        lines += ["| kind | node | from job | until job | value |", "|---|---|---|---|---|"]
        for f in plan["scenarios"]["faults"]:
            until = "-" if f["until_job"] is None else f["until_job"]
            lines.append(f"| {f['kind']} | n{f['node']} | {f['at_job']} | {until} | {f['value']} |")
        lines += ["", "| mode | job | t s | fault | action | applied | detail |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for run in fault_runs:
            for e in run["fault_events"]:
                lines.append(
                    f"| {run['mode']} | {e['job']} | {e['t_s']} | {e['kind']} on {e['node']} | "
                    f"{e['action']} | {e['applied']} | {e['detail'][:80]} |"
                )
        lines += ["", "Jobs under faults:", "",
                  "| job | circuit | mode | state | nodes tried | end-to-end ms | fidelity |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for run in fault_runs:
            for j in run["jobs"]:
                lines.append(
                    f"| {j['index']} | {j['circuit']} | {run['mode']} | {j['state']} | "
                    f"{' > '.join(map(str, j['tried']))} | {_fmt(j['e2e_ms'])} | "
                    f"{_fmt(j['fidelity'], 4)} |"
                )
    lines += [
        "",
        "## Runs",
        "",
        "| scenario | mode | cluster start s | wall s |",
        "|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(f"| {s['scenario']} | {s['mode']} | {s['setup_s']:.1f} | {s['wall_s']:.1f} |")
    lines += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in PLOTS), ""]
    return "\n".join(lines)


def plots(raw: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    circuits = [c["name"] for c in raw["plan"]["circuits"]]
    clean = {r["mode"]: r for r in raw["runs"] if r["scenario"] == "clean"}
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(MODES)
    for k, mode in enumerate(MODES):
        jobs = clean.get(mode, {"jobs": []})["jobs"]
        p50 = [percentile([j["e2e_ms"] for j in jobs if j["circuit"] == c and j["ok"]], 50)
               for c in circuits]  # fmt: skip
        ax.bar([i + k * width for i in range(len(circuits))], p50, width, label=mode)
    ax.set_xticks([i + width / 2 for i in range(len(circuits))], circuits, rotation=30)
    ax.set_ylabel("end-to-end p50 (ms)")
    ax.set_title("Latency per circuit, clean scenario")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / PLOTS[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    for run in raw["runs"]:
        jobs = [j for j in run["jobs"] if j["ok"] and j["predicted"] is not None]
        ax.scatter([j["predicted"] for j in jobs], [j["fidelity"] for j in jobs], s=18,
                   marker="o" if run["mode"] == "distributed" else "x",
                   label=f"{run['scenario']} / {run['mode']}", alpha=0.7)  # fmt: skip
    ax.plot([0.5, 1], [0.5, 1], color="grey", linewidth=0.8)
    ax.set_xlabel("predicted fidelity")
    ax.set_ylabel("measured Hellinger fidelity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / PLOTS[1], dpi=100)
    plt.close(fig)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for run in raw["runs"]:
        if run["scenario"] != "faults":
            continue
        jobs = run["jobs"]
        top.plot([j["index"] for j in jobs], [j["e2e_ms"] for j in jobs], marker="o", ms=3,
                 label=run["mode"])  # fmt: skip
        bottom.plot([j["index"] for j in jobs], [j["fidelity"] or 0.0 for j in jobs],
                    marker="o", ms=3, label=run["mode"])  # fmt: skip
    for f in raw["plan"]["scenarios"].get("faults", []):
        for axis in (top, bottom):
            axis.axvline(f["at_job"] - 0.5, color="red", linewidth=0.8)
            if f["until_job"] is not None:
                axis.axvline(f["until_job"] - 0.5, color="green", linewidth=0.8, linestyle="--")
        top.annotate(f["kind"], (f["at_job"] - 0.4, 0), xycoords=("data", "axes fraction"),
                     fontsize=7, color="red")  # fmt: skip
    top.set_ylabel("end-to-end (ms)")
    top.set_yscale("log")
    bottom.set_ylabel("fidelity (0: failed)")
    bottom.set_xlabel("job index (red: fault set, green: cleared)")
    top.legend(fontsize=7)
    top.set_title("Fault scenario")
    fig.tight_layout()
    fig.savefig(out / PLOTS[2], dpi=100)
    plt.close(fig)


def write_report(raw: dict[str, Any], out: Path) -> Path:
    """Write results.json, plan.json, report.md and the plots to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarize(run) for run in raw["runs"]]
    raw = {**raw, "summary": summaries}
    (out / "results.json").write_text(json.dumps(raw, indent=1, sort_keys=True, default=str))
    (out / "plan.json").write_bytes(plan_json(raw["plan"]))
    (out / "report.md").write_text(markdown(raw, summaries))
    plots(raw, out)
    return out
