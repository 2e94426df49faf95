"""The application layer: qtask's use cases, one module each, whatever the process or transport.

Here: `service` (TaskService: submit, read, list, cancel, wait — the only thing the API's routes
call), `listing` and `waiters` and `live` (its paging, long-poll and stream mechanics),
`reconciler` (queue holds every waiting task), `retention` (ended tasks removed on time) and
`poller` (remote jobs polled and ended). Each works on the domain's ports (TaskStore, TaskQueue,
ObjectStore, Backends, RemoteJobStore, ...) and is given them by process assembly.

Not here: HTTP (api/), the queue loop and child processes (worker/, runtime/), any adapter or
execution backend (imported only by assembly/), process start-up (assembly/).
"""
