"""HTTP calls to the edge with its failures turned into CliError: the server's own message
from the OpenAI error envelope (exit 1), or a connection that could not be made (exit 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from services.cli.errors import REFUSED, UNREACHABLE, CliError


def error_message(response: httpx.Response) -> str:
    """`message (HTTP status)` from the error envelope, or the body's first line."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip().splitlines()[0] if response.text.strip() else ""
    return f"{message or response.reason_phrase} (HTTP {response.status_code})"


class EdgeClient:
    def __init__(self, base_url: str, bearer: str, timeout_s: float):
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=timeout_s,
        )

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, **kwargs) -> dict:
        """The JSON answer of a request that succeeded."""
        with self._transport_errors():
            response = self._client.request(method, path, **kwargs)
        if response.is_error:
            raise CliError(error_message(response), REFUSED)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"{self.base_url} did not answer with JSON: not an edge?", REFUSED
            ) from None

    @contextmanager
    def stream(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        """A successful response whose body is read as it arrives; leaving early closes the
        connection (the edge then cancels the work)."""
        with self._transport_errors(), self._client.stream(method, path, **kwargs) as response:
            if response.is_error:
                response.read()
                raise CliError(error_message(response), REFUSED)
            yield response

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as error:
            reason = str(error) or type(error).__name__
            raise CliError(f"cannot connect to {self.base_url}: {reason}", UNREACHABLE) from None
