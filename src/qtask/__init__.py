"""qtask: run quantum circuits asynchronously, durably and fast.

The rooms, outermost first (each package's docstring says what lives there and what must not;
the import contracts in pyproject.toml enforce the arrows, docs/architecture.md draws them):

- `cli` — the `qtask` command; the only importer of `assembly`.
- `assembly/` — builds a process from its settings: `qtask serve` (embedded), `qtask api |
  worker | poller` (distributed). The one place that knows which adapter implements which port.
- `api/` — HTTP: thin routes over the application layer.   `worker/` — the queue loop that
  runs tasks in child processes or submits them to remote providers.
- `application/` — the use cases (submit, read, list, cancel, wait; reconcile, retain, poll
  remote jobs), written against the domain's ports only.
- `adapters/` — one module per real component (SQLite, Redis, NATS JetStream, object stores,
  rate limiters) implementing a port.   `execution/` — backends that run circuits (Aer, device
  noise, remote providers) and the catalog of configured ones.
- `circuits/` — OpenQASM ingestion: detect, check, parse (in child processes when large).
- `domain/` — the task model, its states, the ports, the object key layout; no I/O.
  `runtime/` — what every process runs on: the child process pool, supervised loops, health.
- `client/` — the light Python client and CLI commands (`pip install qtask`); imports nothing
  of the server.   `mesh/` — the 004 seed's mesh (nodes and coordinator over py-libp2p).
- Beside the rooms: `config` (+ `config_backends`) the one Settings; `constants` names and
  timings that are not settings; `errors` the one error tree; `logs` and `metrics`;
  `testing` the in-memory fakes of every port, for unit tests only.
"""

__version__ = "0.1.0"
