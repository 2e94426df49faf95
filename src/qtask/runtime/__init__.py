"""What every qtask process runs on, whatever its role.

`pool` (the supervised pool of child processes: the API's circuit parsers and the worker's
simulators both use it), `supervision` (background loops that survive errors and report
liveness), `periodic` (a pass every few seconds on top of one: reconciler, retention, poller),
`health` (readiness evaluation and the small health listener of `qtask worker` / `poller`).

Mechanism only: nothing here knows tasks, stores, backends or HTTP routes (an import contract
keeps out the domain, adapters, application, API, worker and execution).
"""
