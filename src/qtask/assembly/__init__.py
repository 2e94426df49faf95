"""Process assembly: the one place that builds a qtask process from its settings.

`wiring` builds the parts every role is made of (pools, object store, retention, the API app
with its service) and is the only module that knows which adapter implements which port;
`embedded` assembles `qtask serve` (SQLite, the worker loop in-process), `roles` assembles
`qtask api`, `qtask worker` and `qtask poller` (Redis, NATS JetStream). `qtask.cli` calls these.

Nothing but the CLI imports this package (an import contract): a class that other code needs
belongs in the room it serves, not here. No use case or rule lives here either: only choosing,
building, starting and stopping.
"""
