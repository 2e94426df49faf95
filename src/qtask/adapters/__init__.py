"""One module per real component behind a port of the domain: SQLite (`sqlite_*`), Redis
(`redis_*`), NATS JetStream (`nats_queue`), object stores on obstore (`objects`: a directory,
S3, memory), and the API's rate limiters (`local_rate`, `redis_rate`).

Adapters store and deliver; they do not decide: the rules of a task's life are the domain's.
They wrap their driver's errors in qtask.errors. Only process assembly imports them, and they
import no API, use case, worker or execution backend (import contracts).
"""
