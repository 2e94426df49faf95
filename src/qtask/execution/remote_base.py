"""What every configured remote backend answers the same way: its capabilities as last read
from the provider, and the poll timing its `[backends.<name>]` settings give; and the bounded
fan-out of status calls of the providers that have no batch status read (IBM, Braket)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from qtask.domain.backends import BackendCapabilities
from qtask.domain.remote import RemoteStatus
from qtask.errors import QTaskError, RemoteUnavailableError
from qtask.runtime.provider_host import ProviderHost


class RemoteTiming(Protocol):
    """The settings of a remote backend the poller reads."""

    @property
    def poll_interval_s(self) -> float: ...

    @property
    def remote_timeout_s(self) -> float: ...


Timed = TypeVar("Timed", bound=RemoteTiming)


class ConfiguredRemote(Generic[Timed]):
    """Base of the remote backends: subclasses set `_capabilities` and `_settings`."""

    _capabilities: BackendCapabilities
    _settings: Timed

    @property
    def capabilities(self) -> BackendCapabilities:
        """The backend's capabilities, as last read from the provider."""
        return self._capabilities

    @property
    def poll_interval_s(self) -> float:
        """Seconds between the first status calls of a job."""
        return self._settings.poll_interval_s

    @property
    def remote_timeout_s(self) -> float:
        """How long a job may stay unfinished at the provider."""
        return self._settings.remote_timeout_s


async def bounded_statuses(
    provider: str,
    job_ids: Sequence[str],
    host: Callable[[], ProviderHost],
    timeout: float,
    limit: asyncio.Semaphore,
    failed: Callable[[str, QTaskError], None],
) -> dict[str, RemoteStatus]:
    """Each job's status by its session's `status` call (`host()`, within `timeout`), as many
    calls at once as `limit` lets; a job the provider does not answer for is left out (polled
    again) and told to `failed`; if none could be read, RemoteUnavailableError naming the
    `provider`."""
    if not job_ids:
        return {}

    async def one(job_id: str) -> tuple[str, RemoteStatus | str]:
        async with limit:
            try:
                status: RemoteStatus = await host().call("status", job_id, timeout=timeout)
            except QTaskError as exc:  # one job's failure must not end the batch
                failed(job_id, exc)
                return job_id, str(exc)
            return job_id, status

    answers = await asyncio.gather(*(one(job_id) for job_id in job_ids))
    found = {job_id: status for job_id, status in answers if isinstance(status, RemoteStatus)}
    failures = [status for _, status in answers if isinstance(status, str)]
    if failures and not found:
        raise RemoteUnavailableError(
            f"{provider} answered no status call ({len(failures)} failed): {failures[0]}"
        )
    return found
