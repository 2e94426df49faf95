"""The HTTP API. Routes validate, call one TaskService method and shape the answer; nothing else."""
