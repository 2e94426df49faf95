"""All settings in one validated object: environment variables (QTASK_*) over an optional TOML file.

`load_settings` is the only entry point; it turns every validation problem into a ConfigError
that names the setting as the user would write it.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from qtask.config_backends import (
    BACKEND_NAME_PATTERN,
    BackendSettings,
    RunnableBackendSettings,
    effective_backends,
)
from qtask.errors import ConfigError
from qtask.mesh.config import MeshSettings

_toml_path: ContextVar[Path | None] = ContextVar("qtask_toml_path", default=None)


def _default_processes() -> int:
    return max(1, os.cpu_count() or 1)


class ServerSettings(BaseModel):
    """The HTTP listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Seconds a client has, from connecting (or from the first byte of its next request), to
    # send the request line and headers; then 408 (or, if it sent nothing, the connection is
    # closed). Bodies have their own limit, limits.body_timeout_s; responses have none.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # The request line and headers together; a larger request gets 431 and is closed.
    max_header_bytes: int = Field(default=32 << 10, ge=1024, le=1 << 20)
    # Seconds an idle keep-alive connection is kept open.
    keep_alive_s: int = Field(default=5, ge=1)
    # Live task streams (GET /tasks/{id}/events websockets) one API process serves at once; one
    # more is closed with 1013. Each costs a coroutine and about two store reads per
    # stream_poll_s, which is how late a queued -> running change may be seen (ends are instant).
    max_streams: int = Field(default=1000, ge=1)
    stream_poll_s: float = Field(default=1.0, gt=0, le=60)
    # A stream whose task did not change for this long is closed (4408); the client reconnects.
    stream_idle_s: float = Field(default=900.0, gt=0)


class StorageSettings(BaseModel):
    """Which adapters hold task state, dispatch tasks and keep objects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # sqlite: one file under data_dir (embedded mode). redis: the [redis] server.
    store: Literal["sqlite", "redis"] = "sqlite"
    # embedded: the SQLite table is the queue. nats: a JetStream stream on the [nats] server.
    queue: Literal["embedded", "nats"] = "embedded"
    data_dir: Path = Path("qtask-data")
    # Where circuits and results are also written, one object per task: a directory path,
    # file:///dir, or s3://bucket/prefix (credentials and endpoint from the AWS_* variables).
    # None keeps them in the task store only.
    objects_url: str | None = None

    @model_validator(mode="after")
    def _compatible(self) -> StorageSettings:
        if (self.store, self.queue) not in {("sqlite", "embedded"), ("redis", "nats")}:
            raise ValueError(
                f"store={self.store!r} cannot work with queue={self.queue!r}: use sqlite with "
                "embedded (one machine) or redis with nats (distributed)"
            )
        return self


class RedisSettings(BaseModel):
    """The Redis server that holds task records in distributed mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = Field(default="qtask", pattern=r"^[A-Za-z0-9_.-]+$")


class NatsSettings(BaseModel):
    """The NATS JetStream server that dispatches tasks in distributed mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "nats://127.0.0.1:4222"
    stream: str = Field(default="QTASK", pattern=r"^[A-Za-z0-9_-]+$")
    subject: str = "qtask.tasks"
    durable: str = Field(default="workers", pattern=r"^[A-Za-z0-9_-]+$")
    # Seconds a delivered task may go without a heartbeat (sent every ack_wait_s / 3) before NATS
    # redelivers it. It is how long a SIGKILLed worker's tasks wait: measured kill -> completion
    # of a short task 6.2 s at 6, 30.2 s at 30 (benchmarks/recovery.py). The cost: a NATS outage
    # (or a worker stalled) for longer than this delivers running circuits again, and a long one
    # then runs twice (the first stored result wins). README "What happens on each failure".
    ack_wait_s: float = Field(default=6.0, gt=0)
    # Seconds between passes of the reconciler that publishes tasks stored but never published.
    reconcile_interval_s: float = Field(default=2.0, gt=0)


class WorkerSettings(BaseModel):
    """The pool of worker processes that run circuits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `max_concurrent_tasks` is the name the 001 executor's config.toml uses.
    processes: int = Field(
        default_factory=_default_processes,
        ge=1,
        le=256,
        validation_alias=AliasChoices("processes", "max_concurrent_tasks"),
    )
    # Aer's OpenMP threads per process; 0 shares the cores evenly between the processes.
    threads_per_process: int = Field(default=0, ge=0)
    # Runs of one task that may crash or lose their worker before the task ends in error.
    max_attempts: int = Field(default=3, ge=1, le=100)
    task_timeout_s: float = Field(default=600.0, gt=0)
    # Most small circuits run together in one simulator call.
    batch_size: int = Field(default=64, ge=1, le=10_000)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Where Aer runs statevector circuits: "auto" uses the GPU when Aer reports one (the
    # qiskit-aer-gpu distribution, see the README), "GPU" refuses to start without one.
    aer_device: Literal["auto", "CPU", "GPU"] = "auto"
    # `qtask worker` answers GET /health and /ready here (0: no HTTP listener).
    health_port: int = Field(default=8001, ge=0, le=65535)


class LimitsSettings(BaseModel):
    """What one request or circuit may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # POST /tasks/batch: how many circuits one request may carry, and its body size.
    max_batch_tasks: int = Field(default=1000, ge=1)
    max_batch_body_bytes: int = Field(default=16 << 20, ge=1024)
    max_circuit_bytes: int = Field(default=512 << 10, ge=64)
    # Qubits a circuit uses (circuits.shape.used_qubits): declared idle ones do not count.
    max_qubits: int = Field(default=100, ge=1)
    max_operations: int = Field(default=100_000, ge=1)
    max_shots: int = Field(default=1_000_000, ge=1)
    # `"memory": true` (one bitstring per shot): shots x classical bits a task may ask for.
    # 1,000,000 keeps a result's per-shot list to a few MB of JSON.
    max_memory_bits: int = Field(default=1_000_000, ge=1)
    # Memory one statevector may take; 4096 MiB is 28 qubits. Clifford circuits are exempt.
    max_statevector_mb: int = Field(default=4096, ge=1)
    parse_timeout_s: float = Field(default=10.0, gt=0)
    parse_processes: int = Field(default=1, ge=1, le=64)
    # Seconds a request body may take to arrive in full; a slower (or stalled) client gets 408.
    body_timeout_s: float = Field(default=30.0, gt=0)


class ApiKey(BaseModel):
    """One accepted API key: the name its tasks belong to and the SHA-256 of the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Several keys may share a name (rotation): they see the same tasks.
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthSettings(BaseModel):
    """API keys, and what each key may do. `qtask keygen NAME` makes a key and its entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    # In the environment: JSON, or the shorter `name:sha256,name:sha256`.
    keys: Annotated[tuple[ApiKey, ...], NoDecode] = ()
    # Requests per second one key may make to the /tasks routes (a token bucket of `burst`
    # tokens); 0 means no limit.
    rate_per_s: float = Field(default=0.0, ge=0)
    burst: int = Field(default=100, ge=1)
    # Tasks one key may have queued or running at once; 0 means no limit.
    max_pending_tasks: int = Field(default=0, ge=0)

    @field_validator("keys", mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            entries = [part.strip() for part in value.split(",") if part.strip()]
            return [dict(zip(("name", "sha256"), e.split(":", 1), strict=False)) for e in entries]
        return value

    @model_validator(mode="after")
    def _has_keys(self) -> AuthSettings:
        if self.enabled and not self.keys:
            raise ValueError("auth is enabled but no keys are configured; see `qtask keygen`")
        return self


class RetentionSettings(BaseModel):
    """How long ended tasks are kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Seconds an ended task (completed, failed or cancelled) and its objects are kept after it
    # ended; afterwards it reads "Task not found.". 0 keeps every task forever.
    keep_finished_s: float = Field(default=0.0, ge=0)
    # Seconds between the removal passes (the poller's, or `qtask serve`'s own).
    interval_s: float = Field(default=60.0, gt=0)


class SupervisionSettings(BaseModel):
    """What a role does when one of its background loops is wedged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `qtask api`, `worker` and `poller`: seconds a loop may stay stuck in one iteration, past
    # the point where /ready turned 503, before the process exits (status 70) for its restart
    # policy to replace it; for docker compose, which restarts exited containers but not
    # unhealthy ones. 0: never (an orchestrator that acts on /ready does it instead).
    wedged_exit_s: float = Field(default=0.0, ge=0)


class LogSettings(BaseModel):
    """Logging output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # None: JSON when stdout is not a terminal, readable lines when it is.
    json_output: bool | None = None


class Settings(BaseSettings):
    """Every setting of qtask. Environment: QTASK_<SECTION>__<NAME>, e.g. QTASK_SERVER__PORT."""

    model_config = SettingsConfigDict(
        env_prefix="QTASK_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    redis: RedisSettings = RedisSettings()
    nats: NatsSettings = NatsSettings()
    worker: WorkerSettings = WorkerSettings()
    limits: LimitsSettings = LimitsSettings()
    auth: AuthSettings = AuthSettings()
    retention: RetentionSettings = RetentionSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    log: LogSettings = LogSettings()
    # [mesh.node] and [mesh.coordinator]: the 004 seed's roles (qtask.mesh.config).
    mesh: MeshSettings = MeshSettings()
    # [backends.<name>] tables over the built-in backends (config_backends), and the one a
    # submission without "backend" runs on.
    backends: dict[
        Annotated[str, StringConstraints(pattern=BACKEND_NAME_PATTERN)], BackendSettings
    ] = {}
    default_backend: str = "aer"

    @property
    def backend_table(self) -> dict[str, RunnableBackendSettings]:
        """Every backend this deployment offers, by name."""
        return effective_backends(self.backends)

    @field_validator("default_backend")
    @classmethod
    def _default_backend_known(cls, name: str, info: ValidationInfo) -> str:
        configured = info.data.get("backends")
        if configured is None:  # the backends failed to validate: that error says why
            return name
        known = effective_backends(configured)
        if name not in known:
            raise ValueError(
                f"{name!r} is not a configured backend; known: {', '.join(sorted(known))}"
            )
        return name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order: explicit arguments, then environment, then the TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build the settings from overrides, QTASK_* variables and the TOML file, or fail clearly.

    The TOML file is `config_file`, else $QTASK_CONFIG when set.
    """
    if config_file is None and os.environ.get("QTASK_CONFIG"):
        config_file = Path(os.environ["QTASK_CONFIG"])
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    token = _toml_path.set(config_file)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # TOML syntax, or an environment value that is not JSON
        where = f"config file {config_file}" if config_file is not None else "environment"
        raise ConfigError(f"{where}: {exc}") from None
    finally:
        _toml_path.reset(token)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        path = [str(p) for p in error["loc"] if p != "[key]"]
        if len(path) > 3 and path[0] == "backends":  # the union's tag is not a setting
            del path[2]
        env = "QTASK_" + "__".join(p.upper() for p in path)
        dotted = ".".join(path)
        problems.append(f"{dotted} (env {env}): {error['msg']}")
    return "invalid configuration: " + "; ".join(problems)
