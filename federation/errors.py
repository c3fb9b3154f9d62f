"""Errors of outbound federation requests, shared by the client, the sender and handlers."""

from __future__ import annotations

from typing import Any


class FederationError(Exception):
    """Base class: a request to a remote server did not give a usable answer."""


class RequestSendFailed(FederationError):
    """The request never got an HTTP answer: DNS, connection, TLS, timeout, or a response
    that was not HTTP or not JSON. `can_retry` is false when retrying cannot help (e.g. the
    destination resolves to a blocked IP range)."""

    def __init__(self, destination: str, reason: str, can_retry: bool = True) -> None:
        super().__init__(f"{destination}: {reason}")
        self.destination = destination
        self.reason = reason
        self.can_retry = can_retry


class HttpResponseError(FederationError):
    """The remote server answered with a non-2xx status."""

    def __init__(self, destination: str, code: int, body: Any) -> None:
        self.destination = destination
        self.code = code
        self.body = body
        self.errcode = body.get("errcode") if isinstance(body, dict) else None
        self.error = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"{destination}: HTTP {code} {self.errcode or ''} {self.error or ''}")


class KeyLookupError(FederationError):
    """A server's verify key could not be found or is not valid at the time needed."""


class SignatureVerifyError(FederationError):
    """A signature is missing or does not verify."""
