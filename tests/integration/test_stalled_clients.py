"""Clients that connect and stall, on both deployments: 2,000 of them at once must neither slow
down a normal client nor stay open past their deadline, and an endless header is cut off early.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtask_testkit import ServerProcess
from servers import DistributedDeployment, started_deployment

Deployment = ServerProcess | DistributedDeployment

HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
ENV = {
    "QTASK_SERVER__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "QTASK_LIMITS__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
}
# What each kind of stalled client sends before it falls silent.
STALLS = {
    "silent": b"",
    "request line": b"POST /tas",
    "headers": b"GET /health HTTP/1.1\r\nHost: qtask\r\nX-Slow: 1",
    "body": (
        b"POST /tasks HTTP/1.1\r\nHost: qtask\r\nContent-Type: application/json\r\n"
        b'Content-Length: 400\r\n\r\n{"qc": "OPENQASM 3.0;'
    ),
}
PER_KIND = 500
# A closed connection counts as closed in time up to this long after its deadline: the server
# closes 2,000 at once, and this test's own event loop reads all of them.
CLOSE_SLACK_S = 2.0

# A well-behaved client in its own process (so this test's event loop cannot delay it): it
# submits a Bell circuit and reads it back, over and over, and prints every latency.
STEADY_CLIENT = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
bell = 'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1];' \
    ' c = measure q;'
latencies, statuses = [], []
with httpx.Client(base_url=url, timeout=10) as http:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        response = http.post("/tasks", json={"qc": bell, "shots": 100})
        latencies.append(time.perf_counter() - started)
        statuses.append(response.status_code)
        if response.status_code == 202:
            started = time.perf_counter()
            read = http.get("/tasks/" + response.json()["task_id"])
            latencies.append(time.perf_counter() - started)
            statuses.append(read.status_code)
        time.sleep(0.01)
print(json.dumps({"latencies": latencies, "statuses": statuses}))
"""


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    yield from started_deployment(request.param, tmp_path_factory, ENV)


def api_pid(deployment: Deployment) -> int:
    """The process that serves HTTP."""
    process = deployment.process if isinstance(deployment, ServerProcess) else deployment.api
    if isinstance(process, subprocess.Popen):
        return process.pid
    assert process is not None
    assert process.process is not None
    return process.process.pid


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def stall(port: int, opening: bytes) -> tuple[float, float]:
    """Connect, send `opening`, then wait for the server to close: return the seconds from
    before connecting, and from after sending, to the close.

    The server's deadline starts between the two (at accept, or when it starts reading the
    body), so the first bounds it from above and the second from below, whatever this test's
    own event loop, busy with 2,000 connections, adds in between.
    """
    connecting = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if opening:
            writer.write(opening)
            await writer.drain()
        sent = time.monotonic()
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass  # a reset is a close too
        closed = time.monotonic()
        return closed - connecting, closed - sent
    finally:
        writer.close()


async def stall_many(port: int) -> dict[str, list[tuple[float, float]]]:
    kinds = [kind for kind in STALLS for _ in range(PER_KIND)]
    times = await asyncio.wait_for(
        asyncio.gather(*(stall(port, STALLS[kind]) for kind in kinds)), 60
    )
    closed: dict[str, list[tuple[float, float]]] = {kind: [] for kind in STALLS}
    for kind, took in zip(kinds, times, strict=True):
        closed[kind].append(took)
    return closed


def test_stalled_connections_are_closed_and_others_are_served(deployment: Deployment) -> None:
    steady = subprocess.Popen(
        [sys.executable, "-c", STEADY_CLIENT, deployment.url, "12"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the steady client's own start-up is not what is measured
        closed = asyncio.run(stall_many(deployment.port))
        out, _ = steady.communicate(timeout=60)
    finally:
        steady.kill()
        steady.wait()
    report = json.loads(out)

    for kind, times in closed.items():
        deadline = BODY_TIMEOUT_S if kind == "body" else HEADER_TIMEOUT_S
        late = [after_send for _, after_send in times if after_send > deadline + CLOSE_SLACK_S]
        early = [since_connect for since_connect, _ in times if since_connect < deadline - 0.1]
        assert len(times) == PER_KIND
        assert not late, f"{len(late)} '{kind}' connections closed late (max {max(late):.1f} s)"
        assert not early, f"{len(early)} '{kind}' connections closed before the deadline"
    statuses = report["statuses"]
    assert 503 not in statuses
    assert set(statuses) <= {200, 202}, sorted(set(statuses))
    latencies = sorted(report["latencies"])
    assert len(latencies) >= 100
    p99 = latencies[int(0.99 * len(latencies))]
    print(f"steady client p99 {1000 * p99:.1f} ms while 2,000 connections stalled")
    # Not a speed target (2 shared cores: 27-63 ms p99 measured across CI runs): a server
    # starved by the stalled connections answers in seconds or not at all, which this catches.
    assert p99 < 0.5, f"p99 {1000 * p99:.1f} ms while 2,000 connections stalled"


def test_an_endless_header_is_cut_off_early(deployment: Deployment) -> None:
    pid = api_pid(deployment)
    before = rss_mb(pid)
    sent = 0
    chunk = b"a" * 65536
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: qtask\r\nX-Endless: ")
        cut_off = False
        try:
            while sent < 400 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset or broken pipe once the server has cut it off
            cut_off = True
        answer = b""
        try:
            answer = sock.recv(4096)
        except OSError:
            pass  # the reset may arrive before the 431 is read
    assert cut_off
    assert sent < 32 << 20, f"{sent >> 20} MiB of one header were accepted"
    if answer:
        assert answer.startswith(b"HTTP/1.1 431 ")
    assert rss_mb(pid) - before < 32
    # And the server is fine.
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: qtask\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_a_large_header_block_gets_431(deployment: Deployment) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 1000) for i in range(40))
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: qtask\r\n" + headers + b"\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"exceed 32768 bytes" in answer


def test_a_large_body_in_the_same_read_as_its_headers_is_not_a_large_header(
    deployment: Deployment,
) -> None:
    # 200 KB of body arrive with the headers in one write: only the headers count.
    body = json.dumps({"qc": "OPENQASM 3.0;" + " " * 200_000}).encode()
    request = (
        b"POST /tasks HTTP/1.1\r\nHost: qtask\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status != 431
    assert 400 <= status < 500  # the circuit itself is not valid, and that is what is said


def test_a_response_given_before_its_body_arrived_says_the_connection_closes(
    deployment: Deployment,
) -> None:
    # The server closes such a connection after the response (the rest of the body would keep
    # it busy), so the response must say so, or a client reuses it and its next request meets
    # a closed connection (seen as "Server disconnected without sending a response" after a
    # 401 to a POST whose body came in a second packet).
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=10) as sock:
        sock.sendall(
            b"POST /tasks HTTP/1.1\r\nHost: qtask\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2000000\r\n\r\n"  # over max_body_bytes; not one byte of it sent
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 413 "), answer
    assert b"\r\nconnection: close" in head, answer
