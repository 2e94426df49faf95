"""Names, messages and timings that are not settings, each with the reason it has its value.

Nothing here may import from the rest of qtask: every layer reads these.
"""

from __future__ import annotations

import signal

# The exact response messages of the seed's API contract (000). Clients match on these strings.
MSG_SUBMITTED = "Task submitted successfully."
MSG_BATCH_SUBMITTED = "Tasks submitted successfully."
MSG_PENDING = "Task is still in progress."
MSG_NOT_FOUND = "Task not found."
MSG_CANCELLED = "Task was cancelled."

# GET /tasks?ids=...: ids one request may read (256 UUIDs make a 9.5 KB query string).
MAX_IDS_PER_READ = 256
# Long polls (GET /tasks/{id}?wait=S): the longest wait a request may ask for. Each waiting
# request is a future in memory and holds one connection; 60 s stays under the idle timeouts of
# common proxies and load balancers, which would otherwise cut the wait.
MAX_WAIT_SECONDS = 60.0
# Listing (GET /tasks?status=...): tasks per page when the request does not say, and at most.
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500

# Default shots when the client gives none: the seed's example uses 1024.
DEFAULT_SHOTS = 1024

# The only files a circuit may include. Both are built into Qiskit's importers, so no include
# ever reads a file from the server's disk.
ALLOWED_INCLUDES = frozenset({"stdgates.inc", "qelib1.inc"})
# Classical bits a circuit may declare. Qiskit's parsers allocate every declared bit and qubit
# before anything else; `bit[2000000000] c;` would take minutes and gigabytes.
MAX_DECLARED_CLBITS = 100_000
# Qubits a circuit may declare, for the same reason. Admission counts the qubits a circuit uses
# (limits.max_qubits): a circuit transpiled for a device declares all of the device's qubits
# (127 for ibm_brisbane, 1,121 for Condor) and uses a few; idle ones are dropped before a run.
MAX_DECLARED_QUBITS = 10_000

# Sources up to this size are parsed with the native importer directly on the API's event loop:
# a Bell circuit takes ~0.05 ms, far less than handing it to another process (~0.3 ms round trip).
# Anything larger, or anything the native importer refuses, is parsed in a child process so the
# event loop never stalls on a slow parse.
INLINE_PARSE_MAX_BYTES = 4096

# Circuits at most this wide and this long are "small": a worker may run several of them in one
# Aer call, which costs little more than one. Larger circuits run alone so that one long run
# cannot delay or take down a batch of short ones.
BATCH_MAX_QUBITS = 16
BATCH_MAX_OPERATIONS = 2000

# How long a claimed task stays leased to a worker without a heartbeat. Workers renew leases every
# LEASE_SECONDS / 3, so a live worker never loses a task however long the circuit runs, and a
# dead worker's task becomes claimable again after at most LEASE_SECONDS.
LEASE_SECONDS = 30.0

# How long the scheduler sleeps when the queue is empty before polling again. A submit also
# wakes it at once in embedded mode, so this only bounds the delay after a missed wake-up.
IDLE_POLL_SECONDS = 0.05

# How long one fetch waits for a task on an empty queue. It is also the fetch loop's interval for
# supervision: an idle worker completes an iteration about this often.
FETCH_WAIT_SECONDS = 1.0

# Supervised loops (fetch, heartbeat, reconciler, retention): a loop with no completed iteration
# in this many of its intervals is stale and /ready answers 503. Three tolerates one slow pass and
# one failed retry; a wedged loop, or one failing every time, is caught within seconds.
LOOP_STALE_INTERVALS = 3
# After a failed iteration a loop waits 0.1 s, then twice as long after each further failure, up
# to 5 s: a broken dependency is not hammered or logged hundreds of times a second, and a loop
# resumes within 5 s once the dependency is back.
LOOP_BACKOFF_FIRST_SECONDS = 0.1
LOOP_BACKOFF_MAX_SECONDS = 5.0
# The exit status of a process its wedge watchdog ended (supervision.WedgeWatchdog): 70 is
# sysexits' EX_SOFTWARE, an internal error.
EXIT_WEDGED = 70
# A task running alone in a worker process is looked up in the store this often while it runs
# (the first time after this long): once it has ended (cancelled), the process is killed and
# replaced, so a cancelled long simulation stops within about this long.
CANCEL_CHECK_SECONDS = 1.0

# The fetch loop waiting for a free worker process is live while some run holds one and is
# within its time limit plus this: the slack for storing the outcome (Redis retries for ~16 s,
# the object store has its own retries). A run older than that is wedged and makes /ready fail.
RUN_SETTLE_GRACE_SECONDS = 120.0

# Exit code of a child process that was asked to stop; anything else is a crash.
CHILD_EXIT_OK = 0

# The name of the lock file that keeps two `qtask serve` processes off one data directory:
# recovery at start-up requeues every running task, which is only safe with one owner.
LOCK_FILE = "qtask.lock"
DB_FILE = "qtask.db"
OBJECTS_DIR = "objects"

# Fault injection for the crash tests: when this variable is set, a worker process that is
# handed a circuit whose source contains its value kills itself with SIGKILL, as a segfault or
# the OOM killer would. Unset in production, it costs one dictionary lookup per task.
FAULT_CRASH_MARKER_ENV = "QTASK_FAULT_CRASH_MARKER"

# A stored task younger than this is left to the API that is publishing it right now; older
# ones never confirmed as published are re-published by the reconciler. JetStream drops the
# duplicate if both publish (the message id is the task id; its duplicate window is 120 s).
RECONCILE_GRACE_SECONDS = 5.0

# Fault injection for the chaos tests: when set, the API process SIGKILLs itself right after a
# task is stored and before it is published, the gap the reconciler exists to close.
FAULT_EXIT_AFTER_STORE_ENV = "QTASK_FAULT_EXIT_AFTER_STORE"

# Fault injection for the supervision tests: when set to a file path, a supervised loop checks
# that file before each iteration; while it holds the loop's name the loop hangs (a wedged
# loop), while it holds "NAME fail" each iteration raises. One stat per iteration when set.
FAULT_LOOP_FILE_ENV = "QTASK_FAULT_LOOP_FILE"

# The signal that ends a child process whose simulation outgrew the memory the worker allows
# (Aer does not bound the matrix product state method's memory; execution.aer watches it). Its
# default action terminates the process even while Aer holds the GIL. The pool reports a child
# ended by it as ChildOutOfMemoryError, and the worker fails the task at once: rerunning a
# circuit that needs more memory than allowed would only need it again.
OUT_OF_MEMORY_SIGNAL = signal.SIGUSR2

# A readiness check (a store ping, a loop's liveness) that has not answered within this many
# seconds fails: /ready must answer an orchestrator's probe (typically a 5 s timeout) with 503,
# not hang on a dependency that hangs.
READY_CHECK_TIMEOUT_SECONDS = 3.0

# A poller's claim on the remote jobs of one pass: they come due again this long after the claim
# when the pass never finished (its process died), so another poller picks them up. A pass of
# 10,000 jobs takes seconds (benchmarks/remote_poll.py); this leaves a wide margin.
REMOTE_POLL_LEASE_SECONDS = 120.0

# Most remote jobs one poller pass claims; 10,000 jobs on a qtask remote are 40 status calls.
REMOTE_POLL_CLAIM_LIMIT = 10_000

# Status calls one pass has in flight at once (per pass, all backends together): bounds what a
# poller asks of a provider without a batch status call.
REMOTE_POLL_CONCURRENCY = 8

# How often the poller looks for due jobs at most; each backend's poll_interval_s decides when a
# job is due.
REMOTE_POLL_TICK_SECONDS = 0.5

# How often each API process re-reads its remote backends' capabilities and health
# (execution.refresh): a provider's limits change seldom, and one GET /backends a minute per
# API process is nothing to a remote qtask.
BACKEND_REFRESH_SECONDS = 60.0

# Fault injection for the federation tests: when set, the worker's process SIGKILLs itself right
# after a remote backend accepted a task and before its job is stored, the gap the idempotency
# key exists to close (the redelivery must get the same remote job back).
FAULT_EXIT_AFTER_REMOTE_SUBMIT_ENV = "QTASK_FAULT_EXIT_AFTER_REMOTE_SUBMIT"
