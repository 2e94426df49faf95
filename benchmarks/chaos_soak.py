"""Chaos soak: a steady load of mixed circuits while a seeded schedule of faults breaks the
service underneath it; at the end, nothing lost, nothing stuck, nothing completed twice.

    .venv/bin/python benchmarks/chaos_soak.py [--duration 600] [--seed 1] [--rate 8]
    .venv/bin/python benchmarks/chaos_soak.py --mode embedded [--kills 20]

`--mode distributed` (default): real redis-server (AOF), nats-server (JetStream), rclone S3,
`qtask api`, `--workers` `qtask worker`s and `qtask poller` as processes
(tests/servers.DistributedDeployment, qtask's default NATS ack wait). The schedule
(benchmarks/chaos_faults.py, printed at the start) SIGKILLs and restarts a worker every 3-8 s,
and at random times stops NATS, Redis, S3, the API and the poller, stalls a worker with
SIGSTOP/SIGCONT and deletes the NATS stream once. `--faults` narrows the fault types.

`--mode embedded`: `qtask serve` on one data directory, its whole process tree SIGKILLed
`--kills` times, 2-5 s after each restart is ready, restarted each time.

The load (benchmarks/chaos_load.py): `--rate` submissions a second, 90 % small circuits, 10 %
16-20 qubits, one in 150 poison (the worker process running it SIGKILLs itself), each with an
Idempotency-Key, retried on connection errors, 5xx and 429.

After the load and the faults stop, everything is started again and the service drains (at most
`--drain` s). Checks, printed with their figures; any failure makes the exit status 1:
- lost: an accepted task id the store does not hold;
- stuck: a task (accepted or not) still queued or running after the drain;
- double-completed: a task with more than one worker log line `task_finished` outcome=completed.
  A run whose result the store refused logs outcome=discarded instead (or, before the store
  reports that, nothing distinguishes it: then the double shows here). A completed task with no
  such line is "unlogged": a worker stores, acknowledges and only then logs, so that is allowed
  only where a worker was SIGKILLed (or stalled) at most UNLOGGED_WINDOW_S after the task's
  finished_at, or a `record_failed` line names the task (stored, then the ack failed); any
  other unlogged completion fails the check;
- a completed line for a task the store does not hold as completed;
- where the store records `completed_by` / `completed_attempt` (the run whose result it kept),
  a completed line from any other run; an unlogged completion is then excused only when that
  very worker was SIGKILLed or stalled within the window;
- poison: every poison task in error, with exactly one dead letter.
Refused submissions are counted by reason; latency is first submit attempt -> finished_at
(the store's clock), p50 / p99, for tasks submitted while faults were being applied.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import chaos_faults
import chaos_load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask.config import load_settings
from qtask.constants import FAULT_CRASH_MARKER_ENV
from qtask_testkit import ServerProcess
from servers import DistributedDeployment

# A worker stores a result, acknowledges the message and then logs `task_finished`: a SIGKILL
# in between leaves a completed task with no line. The gap is milliseconds, but a stalled or
# starved process can widen it, so a kill this long after finished_at still explains it.
UNLOGGED_WINDOW_S = 15.0
TERMINAL = ("completed", "failed")


@dataclass(slots=True)
class Record:
    """A task as the store holds it, reduced to what the checks read."""

    status: str
    created_at: float
    finished_at: float | None
    attempts: int
    error: str | None
    started_at: float | None = None
    worker: str | None = None
    # Where the store records whose result it kept (the worker id and attempt of the one
    # completed transition); None where it does not.
    completed_by: str | None = None
    completed_attempt: int | None = None


@dataclass(slots=True)
class Report:
    """The figures and verdicts of one soak."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        """One line of output."""
        self.lines.append(text)
        print(text, flush=True)

    def check(self, ok: bool, name: str, detail: str) -> None:
        """One verdict: name, PASS/FAIL and its figures."""
        self.add(f"- {name}: {'PASS' if ok else 'FAIL'} ({detail})")
        if not ok:
            self.failures.append(name)


# --- reading the store and the logs ----------------------------------------------------------


def redis_records(url: str) -> tuple[dict[str, Record], Counter[str]]:
    """Every task in Redis, and the dead letters per task id."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="qtask:task:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(
                key, "status", "created_at", "finished_at", "attempts", "error", "started_at",
                "worker", "completed_by", "completed_attempt",
            )  # fmt: skip
        records = {}
        for key, values in zip(keys, pipe.execute(), strict=True):
            status, created, finished, attempts, error, started, worker, by, by_attempt = (
                None if v is None else bytes(v).decode() for v in values
            )
            if status is None:
                continue  # removed meanwhile
            task_id = bytes(key).decode().rsplit(":", 1)[1]
            records[task_id] = Record(
                status,
                float(created or 0),
                None if finished is None else float(finished),
                int(attempts or 0),
                error,
                None if started is None else float(started),
                worker,
                by,
                None if by_attempt is None else int(by_attempt),
            )
        dead = Counter(json.loads(r)["task_id"] for r in client.lrange("qtask:dead", 0, -1))
    finally:
        client.close()
    return records, dead


def sqlite_records(data_dir: Path) -> tuple[dict[str, Record], Counter[str]]:
    """Every task in the embedded database, and the dead letters per task id."""
    conn = sqlite3.connect(data_dir / "qtask.db")
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM tasks").fetchall()
        dead = Counter(r[0] for r in conn.execute("SELECT task_id FROM dead_letters"))
    finally:
        conn.close()
    records = {}
    for r in rows:
        has = r.keys()
        records[r["id"]] = Record(
            r["status"], r["created_at"], r["finished_at"], r["attempts"], r["error"],
            r["started_at"], r["lease_owner"],
            r["completed_by"] if "completed_by" in has else None,
            r["completed_attempt"] if "completed_attempt" in has else None,
        )  # fmt: skip
    return records, dead


def finished_lines(logs: list[Path]) -> dict[str, Counter[str]]:
    """Worker log lines per task id: `task_finished` counted by outcome, and `record_failed`.

    `record_failed` is logged when storing or acknowledging an outcome raised; when the store
    part succeeded (the ack failed: NATS away, stream deleted) the task is completed with no
    `task_finished` line and its message is delivered again, then settled without a run.
    """
    found: dict[str, Counter[str]] = defaultdict(Counter)
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"task_finished"' not in line and '"record_failed"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut by a SIGKILL
            if "task_id" not in event:
                continue
            if event.get("event") == "task_finished":
                outcome = str(event.get("outcome"))
                found[event["task_id"]][outcome] += 1
                if outcome == "completed":  # which run: "by <worker id> <attempt>"
                    attempt = event.get("attempt", event.get("attempts"))
                    found[event["task_id"]][f"by {event.get('worker_id')} {attempt}"] += 1
            elif event.get("event") == "record_failed":
                found[event["task_id"]]["record_failed"] += 1
    return found


# --- the checks ------------------------------------------------------------------------------


def verify(
    report: Report,
    load: chaos_load.LoadStats,
    records: dict[str, Record],
    dead: Counter[str],
    lines: dict[str, Counter[str]],
    kills: list[float],
    fault_window: tuple[float, float],
    killed_ids: set[str] | None = None,
) -> None:
    """Print the figures and verdicts of the end state.

    `kills`: wall times of worker SIGKILLs and stall ends; `killed_ids`: the ids of the
    workers killed or stalled, checked against the store's `completed_by` where it has one.
    """
    accepted = load.accepted
    report.add(f"\n## End state ({len(accepted)} accepted, {len(records)} tasks in the store)\n")
    refused = ", ".join(f"{r}: {n}" for r, n in load.refused.most_common()) or "none"
    retried = ", ".join(f"{r}: {n}" for r, n in load.retries.most_common()) or "none"
    report.add(f"- refused submissions by last reason: {refused}")
    report.add(f"- retried submit attempts by reason: {retried}")
    lost = [t for t in accepted if t not in records]
    report.check(not lost, "lost", f"{len(lost)} accepted ids not in the store {lost[:5]}")
    stuck = sorted(
        (t for t, r in records.items() if r.status not in TERMINAL),
        key=lambda t: records[t].created_at,
    )
    report.check(not stuck, "stuck", f"{len(stuck)} tasks queued/running after the drain")
    start = fault_window[0]
    for t in stuck[:30]:
        r = records[t]
        began = "-" if r.started_at is None else f"{r.started_at - start:.2f} s"
        report.add(
            f"    {t} {r.status}: created {r.created_at - start:.2f} s, started {began}, "
            f"attempts {r.attempts}, worker {r.worker}"
        )
    statuses = Counter(r.status for r in records.values())
    report.add(f"- store statuses: {dict(statuses)}")

    doubles = {t: c["completed"] for t, c in lines.items() if c["completed"] > 1}
    report.check(
        not doubles,
        "double-completed",
        f"{len(doubles)} tasks with more than one task_finished outcome=completed line "
        f"{list(doubles.items())[:5]}",
    )
    stray = [
        t
        for t, c in lines.items()
        if c["completed"] and (t not in records or records[t].status != "completed")
    ]
    report.check(not stray, "completed lines match the store", f"{len(stray)} stray {stray[:5]}")
    unlogged = [
        t for t, r in records.items() if r.status == "completed" and not lines[t]["completed"]
    ]
    after_kill = {
        t
        for t in unlogged
        if any(0 <= k - (records[t].finished_at or 0) <= UNLOGGED_WINDOW_S for k in kills)
        and (killed_ids is None or records[t].completed_by in (None, *killed_ids))
    }
    ack_failed = {t for t in unlogged if lines[t]["record_failed"]}
    unexplained = sorted(set(unlogged) - after_kill - ack_failed)
    report.check(
        not unexplained,
        "unlogged completions explained",
        f"{len(unlogged)} completed with no completed line: {len(after_kill)} within "
        f"{UNLOGGED_WINDOW_S:g} s before a SIGKILL/stall, {len(ack_failed)} with record_failed "
        f"(stored, ack failed), {len(unexplained)} unexplained {unexplained[:5]}",
    )
    if any(r.completed_by is not None for r in records.values()):
        # The store names the run whose result it kept: that run, and no other, logged it.
        wrong = [
            t
            for t, r in records.items()
            if r.status == "completed"
            and lines[t]["completed"]
            and not lines[t][f"by {r.completed_by} {r.completed_attempt}"]
        ]
        report.check(
            not wrong,
            "the completed line is the stored completion (completed_by, completed_attempt)",
            f"{len(wrong)} tasks whose completed line names another run {wrong[:5]}",
        )
    else:
        report.add("- completed_by: not recorded by this store; runs checked by log lines only")
    discarded = sum(c["discarded"] for c in lines.values())
    report.add(f"- runs whose result was refused (outcome=discarded lines): {discarded}")

    poison = [t for t, s in accepted.items() if s.kind == "poison"]
    bad_poison = [
        (t, records[t].status if t in records else None, dead[t])
        for t in poison
        if t not in records or records[t].status != "failed" or dead[t] != 1
    ]
    report.check(
        not bad_poison and bool(poison),
        "poison in error with one dead letter each",
        f"{len(poison)} poison tasks, {len(bad_poison)} otherwise {bad_poison[:5]}",
    )
    innocent_failed = Counter(
        (r.error or "")[:90] for t, r in records.items() if r.status == "failed" and t not in poison
    )
    report.add(
        f"- other tasks ended in error: {sum(innocent_failed.values())} "
        f"{dict(innocent_failed.most_common(3))}"
    )
    other_dead = sum(n for t, n in dead.items() if t not in poison)
    report.add(f"- dead letters of other tasks: {other_dead}")

    end = fault_window[1]
    latencies = sorted(
        (records[t].finished_at or 0) - s.first_try
        for t, s in accepted.items()
        if start <= s.first_try <= end and t in records and records[t].finished_at is not None
    )
    if latencies:
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        report.add(
            f"- submit -> result during faults: p50 {p50:.2f} s, p99 {p99:.2f} s, "
            f"max {latencies[-1]:.2f} s ({len(latencies)} tasks)"
        )


def wait_drained(read: object, bound: float) -> float:
    """Poll the store until no task is queued or running, or `bound` s; return seconds taken."""
    started = time.monotonic()
    while time.monotonic() - started < bound:
        try:
            records, _ = read()  # type: ignore[operator]
        except Exception as exc:  # the store still starting up: try again
            print(f"drain: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            if all(r.status in TERMINAL for r in records.values()):
                break
        time.sleep(1.0)
    return time.monotonic() - started


# --- the two modes ---------------------------------------------------------------------------


def distributed(args: argparse.Namespace, report: Report) -> None:
    """The distributed soak."""
    kinds = tuple(args.faults.split(",")) if args.faults else chaos_faults.FAULT_TYPES
    ack_wait = load_settings().nats.ack_wait_s  # what the roles get: QTASK_* included
    schedule = chaos_faults.make_schedule(args.seed, args.duration, args.workers, ack_wait, kinds)
    report.add(
        f"# Chaos soak, distributed: seed {args.seed}, {args.duration:g} s, "
        f"{args.rate:g} tasks/s, {args.workers} workers, ack wait {ack_wait:g} s"
    )
    report.add(f"\n## Fault schedule ({len(schedule)} faults)\n")
    for fault in schedule:
        report.add(f"    {fault.describe()}")
    root = Path(tempfile.mkdtemp(prefix="qtask-chaos-"))
    d = DistributedDeployment(
        root / "d",
        workers=args.workers,
        processes=1,
        env={FAULT_CRASH_MARKER_ENV: chaos_load.POISON_MARKER},
        ack_wait_s=None,
    )
    try:
        d.start()
        load = chaos_load.Load(d.url, args.seed, args.rate)
        faults = chaos_faults.FaultRunner(d, schedule)
        started = time.time()
        load.start()
        faults.start()
        time.sleep(args.duration)
        load.stop()
        faults.stop()
        ended = time.time()
        report.add("\n## Fault timeline (s from the start of the load)\n")
        for at, text in faults.log.lines:
            report.add(f"    {at:7.2f} {text}")
        report.add(f"\n## Faults applied\n\n- {dict(sorted(faults.log.counts.items()))}")
        exits = ", ".join(f"{k}: {n}" for k, n in sorted(faults.log.exits.items())) or "none"
        report.add(f"- role processes that exited by themselves and were restarted: {exits}")
        missing = set(kinds) - set(faults.log.counts)
        report.check(not missing, "every fault type applied", f"missing {sorted(missing)}")
        for error in faults.log.errors:
            report.add(f"- fault error: {error}")
        d.wait_ready(120)
        drained = wait_drained(lambda: redis_records(d.redis.url), args.drain)
        report.add(f"- submitted {load.submitted}; drained {drained:.0f} s after the faults")
        records, dead = redis_records(d.redis.url)
        logs = sorted((root / "d").glob("worker-*.log"))
        kills = [k for k, _ in faults.log.worker_kills] + [s[1] for s in faults.log.stalls]
        ids = {w for _, w in faults.log.worker_kills} | {s[2] for s in faults.log.stalls}
        lines = finished_lines(logs)
        verify(report, load.stats, records, dead, lines, kills, (started, ended), ids)
    finally:
        d.terminate()
        if args.keep:
            report.add(f"- files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def embedded(args: argparse.Namespace, report: Report) -> None:
    """The embedded soak: `qtask serve` SIGKILLed `--kills` times under load."""
    rng = random.Random(f"embedded-{args.seed}")
    pauses = [rng.uniform(2.0, 5.0) for _ in range(args.kills)]
    report.add(f"# Chaos soak, embedded: seed {args.seed}, {args.kills} SIGKILLs of the whole "
               f"`qtask serve` tree, {args.rate:g} tasks/s")  # fmt: skip
    report.add("- kill after each (re)start is ready, s: " + ", ".join(f"{p:.1f}" for p in pauses))
    root = Path(tempfile.mkdtemp(prefix="qtask-chaos-embedded-"))
    server = ServerProcess(
        root / "data", workers=2, env={FAULT_CRASH_MARKER_ENV: chaos_load.POISON_MARKER}
    )
    kills: list[float] = []
    try:
        server.start()
        load = chaos_load.Load(server.url, args.seed, args.rate)
        started = time.time()
        load.start()
        downtime = []
        for pause in pauses:
            time.sleep(pause)
            kills.append(time.time())
            server.kill_tree()
            server.start()
            downtime.append(time.time() - kills[-1])
        load.stop()
        ended = time.time()
        report.add(f"- {len(kills)} kills; down (kill -> ready) p50 "
                   f"{statistics.median(downtime):.1f} s, max {max(downtime):.1f} s")  # fmt: skip
        drained = wait_drained(lambda: sqlite_records(server.data_dir), args.drain)
        report.add(f"- submitted {load.submitted}; drained {drained:.0f} s after the last kill")
        records, dead = sqlite_records(server.data_dir)
        lines = finished_lines([server.log_path])
        verify(report, load.stats, records, dead, lines, kills, (started, ended))
    finally:
        if server.process is not None and server.process.poll() is None:
            server.terminate()
        if args.keep:
            report.add(f"- files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    """Run one soak; 1 when any check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["distributed", "embedded"], default="distributed")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load + faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=8.0, help="submissions per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faults", help=f"comma-separated subset of {chaos_faults.FAULT_TYPES}")
    parser.add_argument("--kills", type=int, default=20, help="embedded: SIGKILLs of serve")
    parser.add_argument("--drain", type=float, default=300.0, help="bound on the drain, s")
    parser.add_argument("--keep", action="store_true", help="keep logs and data")
    args = parser.parse_args()
    report = Report()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    (distributed if args.mode == "distributed" else embedded)(args, report)
    verdict = "FAIL: " + ", ".join(report.failures) if report.failures else "PASS"
    report.add(f"\nchaos soak ({args.mode}): {verdict}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
