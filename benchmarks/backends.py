"""Each backend's cost: a seeded Bell circuit submitted to completed, the first task that names
the backend in a worker process (which builds the device's simulator) and the next one.

Starts its own `qtask serve --workers 1` in a temporary directory and prints a table.
Run: .venv/bin/python benchmarks/backends.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import BELL, ServerProcess


def submit_to_completed(client: httpx.Client, backend: str) -> tuple[float, dict[str, int]]:
    """Seconds from submit until the task reads completed, and its counts."""
    started = time.perf_counter()
    body = {"qc": BELL, "backend": backend, "seed": 11, "shots": 1024}
    task_id = client.post("/tasks", json=body).json()["task_id"]
    while (answer := client.get(f"/tasks/{task_id}", params={"wait": 30}).json())[
        "status"
    ] == "pending":
        pass
    if answer["status"] != "completed":
        raise SystemExit(f"{backend}: {answer}")
    return time.perf_counter() - started, answer["result"]


def main() -> None:
    """Run and print the table."""
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", workers=1)
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                names = [b["name"] for b in client.get("/backends").json()["backends"]]
                print("| backend | first task in the process | next task | counts |")
                print("|---|---|---|---|")
                for name in names:
                    first, _ = submit_to_completed(client, name)
                    second, counts = submit_to_completed(client, name)
                    print(f"| `{name}` | {first:.2f} s | {second:.2f} s | {counts} |")
        finally:
            server.terminate()


if __name__ == "__main__":
    main()
