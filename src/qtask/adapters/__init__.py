"""One module per real component behind a port: SQLite, a local object directory, and later
Redis, NATS JetStream and S3."""
