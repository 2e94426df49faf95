"""The harness's own readiness check: a server counts as started once the process the test
started answers, not whatever else came to listen on the port it was given."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from qtask_testkit import free_port, listens, wait_ready

# A stand-in server: answers 200 on every path, on the port given as its argument.
READY_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Ready(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Ready).serve_forever()
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args])


@pytest.fixture
def foreign_server() -> Iterator[int]:
    """Another process's server answering /ready with 200; yields its port."""
    port = free_port()
    server = _spawn(READY_SERVER, str(port))
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, "foreign server", lambda: "", 30)
        yield port
    finally:
        server.kill()
        server.wait()


def test_listens_names_only_the_process_that_holds_the_listening_socket() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = int(sock.getsockname()[1])
        assert listens(os.getpid(), port)
        other = _spawn("import time; time.sleep(30)")
        try:
            assert not listens(other.pid, port)
        finally:
            other.kill()
            other.wait()
    assert not listens(os.getpid(), port)


def test_an_answer_from_a_server_the_test_did_not_start_is_not_ready(foreign_server: int) -> None:
    # What a port race looks like: the process was given a port that another server took since,
    # so its bind fails and it exits; the other server answers /ready meanwhile.
    failed_bind = _spawn("import time, sys; time.sleep(1); sys.exit(1)")
    with pytest.raises(RuntimeError, match="stand-in exited early"):
        wait_ready(f"http://127.0.0.1:{foreign_server}", failed_bind, "stand-in", lambda: "", 30)


def test_the_process_that_serves_its_port_is_ready() -> None:
    port = free_port()
    server = _spawn(READY_SERVER, str(port))
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, "stand-in", lambda: "", 30)
        assert listens(server.pid, port)
    finally:
        server.kill()
        server.wait()
