"""What every qtask process runs on, whatever its role: the supervised pool of child processes
(the API's circuit parsers and the worker's simulators both use it) and the readiness
evaluation with its small health listener (the API's /ready, `qtask worker`, `qtask poller`)."""
