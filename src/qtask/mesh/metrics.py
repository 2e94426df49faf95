"""Prometheus metrics of the mesh roles (qtask.metrics style: fixed label sets, never ids).

They live in the default registry, so a node's or coordinator's /metrics serves them with
qtask's own.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# The reasons an advert is refused (adverts.REJECT_REASONS holds the same set).
ADVERTS_REJECTED = Counter(
    "qtask_mesh_adverts_rejected",
    "Adverts refused on receipt: reason schema (not a valid Advert), version (unknown protocol "
    "version), forged (node_id is not the signing peer), future (timestamp ahead of our "
    "clock), capacity (in_use over capacity) or stale (older seq than one already seen).",
    ["reason"],
)
ADVERTS_ACCEPTED = Counter("qtask_mesh_adverts_accepted", "Adverts accepted on receipt.")
ADVERTS_PUBLISHED = Counter(
    "qtask_mesh_adverts_published",
    "Adverts this node published: trigger interval (the refresh) or change.",
    ["trigger"],
)
REQUESTS_SERVED = Counter(
    "qtask_mesh_requests_served",
    "Stream requests a node answered: protocol reserve, execute or ping; outcome ok or the "
    "stable error code of the reply.",
    ["protocol", "outcome"],
)
FRAGMENT_SECONDS = Histogram(
    "qtask_mesh_fragment_run_seconds",
    "One fragment's run on a node's simulator.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
