"""Prometheus metrics of this process, served at GET /metrics (API) and on a worker's or
poller's health port.

Counters and histograms are per process (Prometheus sums them across instances); the task
gauges are read from the shared store at scrape time, so any API instance reports the whole
queue. Label values are fixed sets (outcomes, reasons, route templates), never ids or paths.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# Seconds: from a Bell circuit's milliseconds to a 28-qubit circuit's minutes.
_TASK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                 120, 300, 600, 1800)  # fmt: skip
_HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

TASKS_SUBMITTED = Counter("qtask_tasks_submitted", "Tasks stored by POST /tasks and /tasks/batch.")
TASKS_CANCELLED = Counter("qtask_tasks_cancelled", "Queued tasks cancelled by DELETE /tasks/{id}.")
TASKS_FINISHED = Counter(
    "qtask_tasks_finished",
    "Tasks a worker ended: outcome completed, or failed with reason run_error (the circuit "
    "failed on the simulator), timeout (over task_timeout_s) or attempts (its runs kept "
    "crashing; it is in the dead-letter record).",
    ["outcome", "reason"],
)
TASKS_EXPIRED = Counter(
    "qtask_tasks_expired",
    "Ended tasks removed, with their objects, after retention.keep_finished_s.",
)
REQUESTS_REFUSED = Counter(
    "qtask_requests_refused",
    "Requests refused before any work: reason unauthorized (no or bad API key), rate (over "
    "the key's request rate) or pending (over the key's cap of queued and running tasks).",
    ["reason"],
)
TASKS_REDELIVERED = Counter(
    "qtask_tasks_redelivered",
    "Runs handed back to the queue: a crashed or timed-out batch, or a shutdown.",
)
QUEUE_WAIT_SECONDS = Histogram(
    "qtask_task_queue_wait_seconds", "From submission to the start of a run.",
    buckets=_TASK_BUCKETS,
)  # fmt: skip
RUN_SECONDS = Histogram(
    "qtask_task_run_seconds", "One task's run on the simulator.", buckets=_TASK_BUCKETS
)
LONG_POLLS = Gauge(
    "qtask_long_polls", "Requests of this process waiting in a long poll (?wait=) right now."
)
LIVE_STREAMS = Gauge(
    "qtask_live_streams", "Task event websockets (GET /tasks/{id}/events) open in this process."
)
TASKS = Gauge("qtask_tasks", "Tasks queued or running, read from the store.", ["status"])
HTTP_REQUESTS = Counter(
    "qtask_http_requests", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "qtask_http_request_duration_seconds",
    "From a request's arrival to the end of its answer.",
    ["method", "route"],
    buckets=_HTTP_BUCKETS,
)


def render(active: dict[str, int] | None = None) -> tuple[bytes, str]:
    """The exposition text and its content type; `active` sets the queued/running gauges."""
    if active is not None:
        for status in ("queued", "running"):
            TASKS.labels(status).set(active.get(status, 0))
    return generate_latest(), CONTENT_TYPE_LATEST
