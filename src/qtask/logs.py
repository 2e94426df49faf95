"""Structured logging: JSON lines on stdout when it is not a terminal, readable lines when it is.

Context such as task_id is bound with structlog's contextvars, so every line about a task
carries its id.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO", json_output: bool | None = None) -> None:
    """Set up structlog and route the standard library's loggers (uvicorn's) through it."""
    if json_output is None:
        json_output = not sys.stdout.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # WriteLogger: one write and flush per line, without print()'s extra work.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One canonical line per request is ours to write; uvicorn's access log would double it.
    logging.getLogger("uvicorn.access").disabled = True
    # Qiskit logs every transpiler pass at INFO ("Pass: BasisTranslator - 0.04 (ms)"): shown at
    # DEBUG only.
    debug = level.upper() == "DEBUG"
    logging.getLogger("qiskit").setLevel(logging.DEBUG if debug else logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a logger tagged with the component name."""
    return structlog.get_logger(component=name)  # type: ignore[no-any-return]
