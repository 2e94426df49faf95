"""Prometheus metrics of the coordinator (FR-012), served at its GET /metrics.

Counters and histograms are this process's; the job and node gauges are read at scrape time
(jobs from the database, so they survive a restart). Label values are fixed sets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

JOBS_SUBMITTED = Counter(
    "qtask_mesh_jobs_submitted", "Jobs accepted by POST /api/v1/circuits/submit."
)
JOBS_FINISHED = Counter(
    "qtask_mesh_jobs_finished",
    "Jobs ended: outcome completed, or failed with reason invalid_circuit, infeasible (no node "
    "offers what it needs), attempts (every attempt failed) or internal.",
    ["outcome", "reason"],
)
JOB_SECONDS = Histogram(
    "qtask_mesh_job_seconds", "From submission to the job's end.", buckets=_JOB_BUCKETS
)
FRAGMENT_FAILURES = Counter(
    "qtask_mesh_fragment_failures",
    "Fragment attempts that failed: reason timeout, unreachable, node_error or rejected "
    "(a reservation refused).",
    ["reason"],
)
RETRIES = Counter("qtask_mesh_retries", "Fragment attempts after the first (FR-007).")
JOBS = Gauge("qtask_mesh_jobs", "Jobs by state, read from the database (queue depth).", ["state"])
SUCCESS_RATIO = Gauge(
    "qtask_mesh_job_success_ratio", "Completed jobs / ended jobs, read from the database."
)
NODES = Gauge("qtask_mesh_nodes", "Registry entries by status.", ["status"])
