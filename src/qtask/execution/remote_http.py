"""What the HTTP remote backends (`qtask` federation, `mesh` coordinator) share: one lazily
opened httpx client with the configured bearer key, calls whose transport errors, 429s and 5xxs
become RemoteUnavailableError (the poller retries them), and the error message of a refusal."""

from __future__ import annotations

import os
from typing import Any, Protocol, TypeVar

import httpx

from qtask.errors import RemoteUnavailableError
from qtask.execution.remote_base import ConfiguredRemote, RemoteTiming

# Seconds one HTTP call may take: the remote answers reads in milliseconds when healthy.
CALL_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 2.0


class HttpRemoteSettings(RemoteTiming, Protocol):
    """The settings of an HTTP remote backend this base reads."""

    @property
    def url(self) -> str: ...

    @property
    def api_key_env(self) -> str | None: ...


Http = TypeVar("Http", bound=HttpRemoteSettings)


class HttpRemote(ConfiguredRemote[Http]):
    """Base of the HTTP remote backends: subclasses call `_open_http` in their `__init__`."""

    # Who answers, as errors name it: "the remote qtask", "the mesh coordinator".
    _peer: str

    def _open_http(self, settings: Http, transport: httpx.AsyncBaseTransport | None) -> None:
        self._settings = settings
        self._transport = transport  # tests answer with httpx.MockTransport
        self._url = settings.url.rstrip("/")
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {}
            if self._settings.api_key_env:
                key = os.environ.get(self._settings.api_key_env, "")
                if key:
                    headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(
                base_url=self._url,
                headers=headers,
                timeout=CALL_TIMEOUT_S,
                transport=self._transport,
            )
        return self._client

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteUnavailableError(
                f"{self._peer} {self._url} cannot be reached: {type(exc).__name__} {exc}"
            ) from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise RemoteUnavailableError(
                f"{self._peer} {self._url} answered {response.status_code}"
            )
        return response

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def response_message(response: httpx.Response) -> str:
    """The `message` of an error body, or the start of a body that is not JSON."""
    try:
        return str(response.json().get("message"))
    except ValueError:
        return response.text[:200]
