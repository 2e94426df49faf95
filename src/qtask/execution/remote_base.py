"""What every configured remote backend answers the same way: its capabilities as last read
from the provider, and the poll timing its `[backends.<name>]` settings give."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from qtask.domain.backends import BackendCapabilities


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
