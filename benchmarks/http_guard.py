"""What qtask's connection guards cost per request: uvicorn's own httptools protocol against
`qtask.api.server.GuardedHttpToolsProtocol`, on the same minimal ASGI app.

    .venv/bin/python benchmarks/http_guard.py [--requests 20000] [--clients 16]

Each server runs in its own process; its CPU time (user + system, from /proc) is read before and
after the load, so the client's CPU is not counted. Prints a table of CPU per GET and per POST.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import free_port

SERVER = """
import sys, uvicorn
from qtask.api.server import GuardedHttpToolsProtocol

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})

protocol = GuardedHttpToolsProtocol if sys.argv[2] == "guarded" else "httptools"
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=protocol, log_level="warning")
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(url: str, method: str, requests: int, clients: int) -> None:
    body = b'{"qc": "OPENQASM 3.0; qubit[2] q;"}'

    async def client(count: int) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(count):
                if method == "GET":
                    response = await http.get("/tasks/x")
                else:
                    response = await http.post("/tasks", content=body)
                response.raise_for_status()

    await asyncio.gather(*(client(requests // clients) for _ in range(clients)))


def measure(kind: str, requests: int, clients: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), kind])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        per: dict[str, float] = {}
        for method in ("GET", "POST"):
            asyncio.run(load(url, method, requests // 10, clients))  # warm up
            before = cpu_seconds(server.pid)
            asyncio.run(load(url, method, requests, clients))
            per[method] = (cpu_seconds(server.pid) - before) / requests * 1000
        return per
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    print(f"{args.requests} requests per method, {args.clients} keep-alive clients")
    print(f"{'protocol':<10} {'CPU/GET ms':>11} {'CPU/POST ms':>12}")
    for kind in ("httptools", "guarded"):
        per = measure(kind, args.requests, args.clients)
        print(f"{kind:<10} {per['GET']:>11.4f} {per['POST']:>12.4f}")


if __name__ == "__main__":
    main()
