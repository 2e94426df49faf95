"""The HTTP API. Routes validate, call one TaskService method and shape the answer; nothing else.

Also here: the app factory, one exception handler from domain errors to HTTP answers, API keys
(`auth`, which takes a RateLimiter port), websockets and SSE (`events`), docs and the web page.
Not here: SQL, Redis, NATS or object-store calls, adapters, workers or execution backends
(an import contract): the API reaches them only through the application layer.
"""
