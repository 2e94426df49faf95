"""End to end: a real role's /ready goes 503 while one of its loops is wedged or failing every
iteration, names the loop, and is 200 again once the loop runs. The fault is injected through the
test-only QTASK_FAULT_LOOP_FILE hook (see qtask.constants)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from meshcoord import CoordinatorProcess
from meshkit import node_process
from qtask.constants import EXIT_WEDGED, FAULT_LOOP_FILE_ENV
from qtask_testkit import BELL, ServerProcess, free_port, submit, wait_done
from servers import NatsServer, RedisServer, RoleProcess


def _ready(url: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{url}/ready", timeout=5)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def _wait_ready_status(url: str, status: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll /ready until it answers `status`; return that answer's body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            code, body = _ready(url)
        except httpx.HTTPError as exc:
            last = exc
        else:
            if code == status:
                return body
            last = (code, body)
        time.sleep(0.1)
    raise AssertionError(f"/ready did not answer {status} in {timeout} s; last: {last}")


def worker_process(
    tmp_path: Path, redis_server: RedisServer, nats_server: NatsServer, **env: str
) -> RoleProcess:
    """A `qtask worker` (one process) whose loops the file tmp_path/fault can wedge."""
    return RoleProcess(
        "worker",
        ["--workers", "1"],
        {
            "QTASK_STORAGE__STORE": "redis",
            "QTASK_STORAGE__QUEUE": "nats",
            "QTASK_REDIS__URL": redis_server.url,
            "QTASK_NATS__URL": nats_server.url,
            "QTASK_WORKER__HEALTH_PORT": str(free_port()),
            "QTASK_LOG__JSON_OUTPUT": "true",
            FAULT_LOOP_FILE_ENV: str(tmp_path / "fault"),
            **env,
        },
        tmp_path / "worker.log",
    )


def test_worker_ready_is_503_while_its_fetch_loop_is_wedged(
    tmp_path: Path, redis_server: RedisServer, nats_server: NatsServer
) -> None:
    fault = tmp_path / "fault"
    worker = worker_process(tmp_path, redis_server, nats_server)
    url = f"http://127.0.0.1:{worker.env['QTASK_WORKER__HEALTH_PORT']}"
    worker.start()
    try:
        worker.wait_ready()
        body = _wait_ready_status(url, 200)
        assert body["checks"]["worker_fetch"].startswith("ok (")
        assert body["checks"]["worker_heartbeat"].startswith("ok (")

        fault.write_text("worker_fetch")  # the fetch loop hangs before its next iteration
        wedged_at = time.monotonic()
        body = _wait_ready_status(url, 503)
        print(f"worker /ready 503 {time.monotonic() - wedged_at:.1f} s after the wedge")
        check = body["checks"]["worker_fetch"]
        assert check.startswith("failing: worker_fetch: no completed iteration for "), check
        assert "(limit 3 s)" in check
        assert body["checks"]["store"] == "ok"  # only the wedged loop fails
        assert body["checks"]["worker_heartbeat"].startswith("ok (")

        fault.unlink()  # the loop runs again
        _wait_ready_status(url, 200)
    finally:
        worker.terminate()
    assert worker.process is not None
    assert worker.process.returncode == 0, worker.log()  # a clean shutdown after all


def _worker_exit_line(
    tmp_path: Path, redis_server: RedisServer, nats_server: NatsServer, fault: str, event: str
) -> dict[str, Any]:
    """Start a worker whose wedge watchdog allows 2 s, inject `fault`, wait for its exit with
    status 70 and return its `event` line."""
    worker = worker_process(
        tmp_path, redis_server, nats_server, QTASK_SUPERVISION__WEDGED_EXIT_S="2"
    )
    worker.start()
    try:
        worker.wait_ready()
        (tmp_path / "fault").write_text(fault)
        injected_at = time.monotonic()
        assert worker.process is not None
        assert worker.process.wait(60) == EXIT_WEDGED, worker.log()
        print(f"worker exited {time.monotonic() - injected_at:.1f} s after {fault!r}")
    finally:
        worker.terminate()
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    [line] = [line for line in lines if line.get("event") == event]
    assert line["exit_code"] == EXIT_WEDGED
    return line


def test_a_worker_whose_fetch_loop_stays_wedged_exits_70_for_its_restart_policy(
    tmp_path: Path, redis_server: RedisServer, nats_server: NatsServer
) -> None:
    # docker compose restarts a container that exits, not one whose /ready is 503.
    line = _worker_exit_line(
        tmp_path, redis_server, nats_server, "worker_fetch", "loop_wedged_exit"
    )
    assert line["loop"] == "worker_fetch"


def test_a_worker_whose_event_loop_stays_blocked_exits_70_too(
    tmp_path: Path, redis_server: RedisServer, nats_server: NatsServer
) -> None:
    # A synchronous call that never returns stops every loop and the watchdog's own ticks; the
    # watchdog's thread sees that.
    line = _worker_exit_line(
        tmp_path, redis_server, nats_server, "worker_fetch block", "event_loop_blocked_exit"
    )
    assert line["blocked_s"] >= 2


def test_an_api_whose_reconciler_stays_wedged_exits_70_too(
    tmp_path: Path, redis_server: RedisServer, nats_server: NatsServer
) -> None:
    (tmp_path / "fault").write_text("reconciler")  # hangs from its first iteration
    api = RoleProcess(
        "api",
        [],
        {
            "QTASK_STORAGE__STORE": "redis",
            "QTASK_STORAGE__QUEUE": "nats",
            "QTASK_REDIS__URL": redis_server.url,
            "QTASK_NATS__URL": nats_server.url,
            "QTASK_NATS__RECONCILE_INTERVAL_S": "0.5",  # stale after 1.5 s
            "QTASK_SERVER__PORT": str(free_port()),
            "QTASK_LOG__JSON_OUTPUT": "true",
            "QTASK_SUPERVISION__WEDGED_EXIT_S": "1",
            FAULT_LOOP_FILE_ENV: str(tmp_path / "fault"),
        },
        tmp_path / "api.log",
    )
    api.start()
    try:
        assert api.process is not None
        assert api.process.wait(60) == EXIT_WEDGED, api.log()
    finally:
        api.terminate()
    lines = [json.loads(line) for line in api.log().splitlines() if line.startswith("{")]
    [wedged] = [line for line in lines if line.get("event") == "loop_wedged_exit"]
    assert wedged["loop"] == "reconciler"


def test_a_mesh_coordinator_whose_ping_loop_stays_wedged_exits_70_too(tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    coordinator = CoordinatorProcess(
        tmp_path / "coordinator",
        {
            "QTASK_MESH__COORDINATOR__PING_INTERVAL_S": "0.2",
            "QTASK_MESH__COORDINATOR__PING_TIMEOUT_S": "0.3",  # stale after 1.5 s
            "QTASK_SUPERVISION__WEDGED_EXIT_S": "1",
            FAULT_LOOP_FILE_ENV: str(fault),
        },
    )
    coordinator.start()
    try:
        fault.write_text("mesh_pinger")
        assert coordinator.process is not None
        assert coordinator.process.wait(60) == EXIT_WEDGED, coordinator.log()[-4000:]
    finally:
        coordinator.terminate()
    lines = [json.loads(line) for line in coordinator.log().splitlines() if line.startswith("{")]
    [wedged] = [line for line in lines if line.get("event") == "loop_wedged_exit"]
    assert wedged["loop"] == "mesh_pinger"


def test_a_mesh_nodes_ready_names_a_failing_loop_and_a_wedged_loop_exits_70(
    tmp_path: Path,
) -> None:
    fault = tmp_path / "fault"
    # Adverts every 0.3 s: the advert loop is stale 1.2 s into a stuck turn.
    node = node_process(tmp_path / "node", health_port=0, advert_interval_s=0.3)
    node.env = {"QTASK_SUPERVISION__WEDGED_EXIT_S": "1", FAULT_LOOP_FILE_ENV: str(fault)}
    node.start()
    try:
        url = f"http://127.0.0.1:{node.ready['health_port']}"
        body = _wait_ready_status(url, 200)
        for loop in ("mesh_adverts", "mesh_calibration", "mesh_expiry"):
            assert body["checks"][loop].startswith("ok ("), body
        # A loop failing every pass: /ready names it and its error; the process lives on.
        fault.write_text("mesh_expiry fail")
        check = _wait_ready_status(url, 503)["checks"]["mesh_expiry"]
        assert check.startswith("failing: mesh_expiry: no completed iteration for "), check
        assert check.endswith(f"RuntimeError: fault injected into mesh_expiry by {fault}"), check
        fault.unlink()
        _wait_ready_status(url, 200)
        # A loop stuck in one pass: the watchdog ends the node for its restart policy.
        fault.write_text("mesh_adverts")
        assert node.process is not None
        assert node.process.wait(60) == EXIT_WEDGED, node.log()[-4000:]
    finally:
        node.terminate()
    [wedged] = [line for line in node.lines() if line.get("event") == "loop_wedged_exit"]
    assert wedged["loop"] == "mesh_adverts"


def test_serve_ready_is_503_while_its_fetch_loop_fails_every_iteration(tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    server = ServerProcess(tmp_path / "data", env={FAULT_LOOP_FILE_ENV: str(fault)})
    server.start()
    try:
        fault.write_text("worker_fetch fail")
        body = _wait_ready_status(server.url, 503)
        check = body["checks"]["worker_fetch"]
        assert check.startswith("failing: worker_fetch: no completed iteration for "), check
        injected = f"fault injected into worker_fetch by {fault}"
        assert check.endswith(f"last error: RuntimeError: {injected}"), check

        fault.unlink()
        _wait_ready_status(server.url, 200)
        with httpx.Client(base_url=server.url, timeout=30) as client:  # and it takes tasks
            assert wait_done(client, submit(client, BELL))["status"] == "completed"
    finally:
        server.terminate()
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == "loop_failed"]
    assert failed
    assert all(line["loop"] == "worker_fetch" for line in failed)
    assert "Traceback" in failed[0]["exception"]
    assert [line["retry_in_s"] for line in failed[:3]] == [0.1, 0.2, 0.4]
