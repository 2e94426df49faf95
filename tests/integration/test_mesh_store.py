"""The coordinator's SQLite database (FR-010): migrations up and down, and records kept."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from qtask.errors import ConfigError, PendingCapError
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.jobs import Fragment, FragmentStatus, Job, JobState
from qtask.mesh.migrations import HEAD, current_version, migrate
from qtask.mesh.protocol import Advert, Availability, NoiseSpec, QualityReport
from qtask.mesh.retention import QualityRetention
from qtask.mesh.store import MeshStore, open_migrated


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def test_migrations_go_up_to_head_down_to_zero_and_up_again(tmp_path: Path) -> None:
    db = tmp_path / "mesh.db"
    steps = open_migrated(db)
    assert len(steps) == HEAD
    assert steps[0].startswith("upgrade 0 -> 1")
    assert {"jobs", "fragments", "reservation_events", "adverts", "quality_reports",
            "decisions"} <= tables(db)  # fmt: skip
    down = open_migrated(db, to=0)
    assert down[0].startswith(f"downgrade {HEAD} -> {HEAD - 1}")
    assert tables(db) == {"schema_version"}
    assert open_migrated(db) == steps
    assert "decisions" in tables(db)


def test_a_downgrade_of_one_step_keeps_the_data_of_the_tables_below_it(tmp_path: Path) -> None:
    db = tmp_path / "mesh.db"
    open_migrated(db)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO jobs (id, state, qasm, shots, created_at, updated_at) "
            "VALUES ('j', 'QUEUED', 'x', 1, 1, 1)"
        )
    open_migrated(db, to=1)
    assert "decisions" not in tables(db)
    open_migrated(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [("j",)]


def test_an_unknown_version_and_a_newer_database_are_refused_clearly(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "mesh.db", isolation_level=None)
    with pytest.raises(ConfigError, match="does not exist"):
        migrate(conn, HEAD + 1)
    migrate(conn)
    conn.execute("UPDATE schema_version SET version = ?", (HEAD + 5,))
    with pytest.raises(ConfigError, match="newer than this qtask"):
        migrate(conn)
    assert current_version(conn) == HEAD + 5
    conn.close()


async def test_jobs_fragments_and_records_survive_a_reopen(tmp_path: Path) -> None:
    store = MeshStore(tmp_path / "mesh.db")
    job = Job("j1", JobState.QUEUED, "OPENQASM 2.0;", 100, 7, 0.9, 1.0, 1.0, owner="k")
    await store.save_job(job)
    await store.save_job(job.advance(JobState.COMPILING, 2.0))
    frag = Fragment("j1-f0", 1, "node-a", FragmentStatus.EXECUTING, "r1", start=3.0)
    await store.save_fragment("j1", frag)
    advert = Advert(
        node_id="node-a", gates=("h",), qubit_range=(1, 2), fidelity=0.9,
        fidelity_measured_at=1.0, noise=NoiseSpec(), availability=Availability.AVAILABLE,
        capacity=1, in_use=0, timestamp=1.0, seq=1,
    )  # fmt: skip
    await store.save_advert(advert, 1.5)
    await store.add_quality(
        QualityReport(kind="link", reporter="c", node_id="node-a", latency_ms=1.0, loss=0.0,
                      measured_at=2.0), 2.1,
    )  # fmt: skip
    await store.add_reservation_event("r1", "node-a", "j1", "accepted", 3.0, {"window": [3, 4]})
    await store.add_decision("j1", "j1-f0", 1, "node-a", 3.0, "best", {"nodes": []})
    await store.close()

    again = MeshStore(tmp_path / "mesh.db")
    [unfinished] = again.unfinished_jobs()
    assert unfinished.state is JobState.COMPILING
    assert unfinished.seed == 7
    assert unfinished.fragments == (frag,)
    assert again.adverts() == [(advert, 1.5)]
    assert again.quality_reports("node-a")[0]["latency_ms"] == 1.0
    assert again.reservation_events("r1")[0]["detail"] == {"window": [3, 4]}
    assert again.decisions("j1")[0]["snapshot"] == {"nodes": []}
    assert again.job_counts() == {"COMPILING": 1}
    await again.close()


async def test_a_second_job_under_one_idempotency_key_returns_the_first(tmp_path: Path) -> None:
    store = MeshStore(tmp_path / "mesh.db")
    first = Job("j1", JobState.QUEUED, "q", 1, None, 0.0, 1.0, 1.0, idempotency_key="task-7")
    assert await store.create_job(first) == first
    again = Job("j2", JobState.QUEUED, "q", 1, None, 0.0, 2.0, 2.0, idempotency_key="task-7")
    assert (await store.create_job(again)).id == "j1"
    other_owner = Job("j3", JobState.QUEUED, "q", 1, None, 0.0, 2.0, 2.0, owner="bob",
                      idempotency_key="task-7")  # fmt: skip
    assert (await store.create_job(other_owner)).id == "j3"
    assert store.job("j2") is None
    await store.close()


def report(node: str, at: float) -> QualityReport:
    return QualityReport(kind="link", reporter="c", node_id=node, latency_ms=at, loss=0.0,
                         measured_at=at)  # fmt: skip


async def test_the_retention_loop_keeps_recent_reports_and_the_newest_rows_per_node(
    tmp_path: Path,
) -> None:
    store = MeshStore(tmp_path / "mesh.db")
    now = 10_000.0
    await store.add_quality(report("a", 1.0), now - 7200)  # past quality_keep_s: goes
    for at in range(2, 7):  # five recent reports on "a": the newest three stay
        await store.add_quality(report("a", float(at)), now - 10)
    await store.add_quality(report("b", 9.0), now - 10)
    settings = CoordinatorSettings(
        quality_keep_s=3600, quality_keep_rows=3, quality_prune_interval_s=0.01
    )
    pruned = asyncio.Event()

    class Watched:
        removed = 0

        async def prune_quality(self, older_than: float, keep_rows: int) -> int:
            self.removed = await store.prune_quality(older_than, keep_rows)
            return self.removed

        async def prune_decisions(self, older_than: float) -> int:
            # The iteration's last await: once it returns, the iteration counts what it removed.
            removed = await store.prune_decisions(older_than)
            if self.removed:
                pruned.set()
            return removed

    retention = QualityRetention(Watched(), settings, clock=lambda: now)
    loop = retention.loop()
    loop.start()
    try:
        async with asyncio.timeout(10):
            await pruned.wait()
    finally:
        await loop.stop()
    assert [r["latency_ms"] for r in store.quality_reports("a")] == [4.0, 5.0, 6.0]
    assert [r["latency_ms"] for r in store.quality_reports("b")] == [9.0]
    assert retention.removed == 3
    assert loop.failures == 0
    await store.close()


async def test_a_key_at_its_cap_of_unfinished_jobs_is_refused_in_the_insert(
    tmp_path: Path,
) -> None:
    store = MeshStore(tmp_path / "mesh.db")
    first = Job("j1", JobState.QUEUED, "q", 1, None, 0.0, 1.0, 1.0, owner="k")
    await store.create_job(first, max_pending=1)
    second = Job("j2", JobState.QUEUED, "q", 1, None, 0.0, 1.0, 1.0, owner="k")
    with pytest.raises(PendingCapError, match="key 'k' has 1 queued or running"):
        await store.create_job(second, max_pending=1)
    assert store.job("j2") is None
    await store.save_job(first.advance(JobState.FAILED, 2.0, error="cancelled"))
    assert (await store.create_job(second, max_pending=1)).id == "j2"
    await store.close()


def test_the_cli_moves_the_database_to_the_version_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qtask.cli import main

    # main() would point structlog at capsys' stdout, closed after this test: every later test
    # in this process that logs would fail on it.
    monkeypatch.setattr("qtask.logs.configure", lambda *args, **kwargs: None)
    db = tmp_path / "mesh.db"
    monkeypatch.setenv("QTASK_MESH__COORDINATOR__DATABASE", str(db))
    assert main(["coordinator", "--migrate-to", str(HEAD)]) == 0
    assert "decisions" in tables(db)
    assert main(["coordinator", "--migrate-to", "0"]) == 0
    assert tables(db) == {"schema_version"}
    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0]
        == "upgrade 0 -> 1: jobs, fragments, reservation events, adverts, quality reports"
    )
    assert printed[-1].startswith("downgrade 1 -> 0")


async def test_the_retention_loop_drops_old_decisions_of_ended_jobs_and_keeps_live_ones(
    tmp_path: Path,
) -> None:
    # One registry snapshot per decision: without a bound the table grows for as long as the
    # coordinator runs. A live job's decisions stay however old (its plan is still running).
    store = MeshStore(tmp_path / "mesh.db")
    now = 10_000.0
    old, recent = now - 7200, now - 10
    jobs = {
        "live": JobState.EXECUTING,
        "done": JobState.COMPLETED,
        "failed": JobState.FAILED,
        "done-late": JobState.COMPLETED,
    }
    for job_id, state in jobs.items():
        await store.save_job(Job(job_id, state, "q", 1, None, 0.0, old, old))
    for job_id in ("live", "done", "failed"):
        await store.add_decision(job_id, f"{job_id}.f0", 1, "node-a", old, "best", {"n": 1})
    await store.add_decision("done-late", "done-late.f0", 1, "node-a", recent, "best", {"n": 2})
    await store.add_decision("gone", "gone.f0", 1, "node-a", old, "best", {"n": 3})  # no job row
    settings = CoordinatorSettings(quality_keep_s=3600, quality_prune_interval_s=0.01)

    retention = QualityRetention(store, settings, clock=lambda: now)
    await retention.iteration()

    assert [d["snapshot"] for d in store.decisions("live")] == [{"n": 1}]
    assert store.decisions("done") == []
    assert store.decisions("failed") == []
    assert store.decisions("gone") == []
    assert [d["snapshot"] for d in store.decisions("done-late")] == [{"n": 2}]
    assert retention.removed == 3
    await store.close()
