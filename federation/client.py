"""Outbound federation requests: JSON over HTTPS to another homeserver, signed with X-Matrix.

`FederationClient.get_json/put_json/post_json(destination, path, ...)` resolve the
destination (`ServerResolver`), connect to the first target that accepts (`TlsConnector`:
IP range filter, SNI, certificate checks), send the request with the target's `Host` header,
and return the parsed JSON body (`get_raw` returns the bytes and headers instead, for media).
Every failure is a `FederationError`: `HttpResponseError`
for a non-2xx answer, `RequestSendFailed` for everything else (DNS, blocked address,
connection, TLS, timeout, oversized or non-JSON body).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from prometheus_client import Counter, Histogram
from twisted.internet import defer
from twisted.internet.interfaces import IProtocol
from twisted.web.client import URI, Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from federation.discovery import (
    BlockedAddressError,
    BodyTooLargeError,
    IPRangeFilter,
    ServerResolver,
    Target,
    TlsConnector,
    read_limited_body,
)
from federation.errors import HttpResponseError, RequestSendFailed
from federation.xmatrix import sign_request
from homeserver.clock import Clock
from homeserver.config import FederationConfig
from homeserver.events.canonical import parse_json

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "heddle_federation_client_requests_total",
    "Outbound federation requests, by method and response code (ERR: no HTTP answer)",
    ["method", "code"],
)
REQUEST_SECONDS = Histogram(
    "heddle_federation_client_request_seconds",
    "Time from sending an outbound federation request to having its whole response",
    ["method"],
)

# Idle connections kept per destination, and for how long.
MAX_PERSISTENT_PER_DESTINATION = 5
IDLE_CONNECTION_TIMEOUT_S = 120


@dataclass(frozen=True)
class RawResponse:
    """A 2xx answer to `get_raw`; `headers` maps lower-case names to the last value."""

    code: int
    headers: dict[str, str]
    body: bytes


def build_path(template: str, *parts: str) -> str:
    """Fill a `"/_matrix/federation/v1/state/%s"` style template, percent-encoding each part
    (every reserved character, `/` included)."""
    return template % tuple(quote(part, safe="") for part in parts)


@implementer(IAgentEndpointFactory)
class _TargetsEndpointFactory:
    """Endpoints for one request: already-resolved targets, tried in order."""

    def __init__(self, connector: TlsConnector, targets: list[Target], verify: bool) -> None:
        self._connector = connector
        self._targets = targets
        self._verify = verify

    def endpointForURI(self, uri: URI) -> Any:
        return self

    def connect(self, protocol_factory: Any) -> defer.Deferred[IProtocol]:
        return defer.ensureDeferred(
            self._connector.connect_first(protocol_factory, self._targets, self._verify)
        )


class FederationClient:
    def __init__(
        self,
        reactor: Any,
        clock: Clock,
        server_name: str,
        signing_key: Any,
        config: FederationConfig,
        resolver: ServerResolver,
        connector: TlsConnector | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._server_name = server_name
        self._signing_key = signing_key
        self._config = config
        self._resolver = resolver
        self._connector = connector or TlsConnector(
            reactor, IPRangeFilter(config.ip_range_blocklist, config.ip_range_allowlist)
        )
        self._closed = False
        self._in_flight: set[defer.Deferred[Any]] = set()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = MAX_PERSISTENT_PER_DESTINATION
        self._pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT_S
        # Told the name of every destination that answers (with anything but a 5xx, which
        # may come from a proxy in front of a server that is down).
        self._answer_listeners: list[Callable[[str], None]] = []

    def add_answer_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(destination)` whenever a destination answers a request."""
        self._answer_listeners.append(listener)

    async def get_json(
        self,
        destination: str,
        path: str,
        args: dict[str, list[str]] | None = None,
        *,
        signed: bool = True,
        timeout_ms: int | None = None,
        max_response_bytes: int | None = None,
    ) -> Any:
        return await self._request(
            "GET", destination, path, args, None, signed, timeout_ms, max_response_bytes
        )

    async def put_json(
        self,
        destination: str,
        path: str,
        data: Any,
        *,
        args: dict[str, list[str]] | None = None,
        signed: bool = True,
        timeout_ms: int | None = None,
        max_response_bytes: int | None = None,
    ) -> Any:
        return await self._request(
            "PUT", destination, path, args, data, signed, timeout_ms, max_response_bytes
        )

    async def post_json(
        self,
        destination: str,
        path: str,
        data: Any,
        *,
        args: dict[str, list[str]] | None = None,
        signed: bool = True,
        timeout_ms: int | None = None,
        max_response_bytes: int | None = None,
    ) -> Any:
        return await self._request(
            "POST", destination, path, args, data, signed, timeout_ms, max_response_bytes
        )

    async def get_raw(
        self,
        destination: str,
        path: str,
        args: dict[str, list[str]] | None = None,
        *,
        signed: bool = True,
        timeout_ms: int | None = None,
        max_response_bytes: int | None = None,
    ) -> RawResponse:
        """A GET whose answer is not JSON (media): the 2xx status, the response headers and
        the body, refused past `max_response_bytes`. A non-2xx answer is an
        `HttpResponseError` like `get_json`'s (with the JSON error body, if any)."""
        code, headers, body = await self._request_raw(
            "GET", destination, path, args, None, signed, timeout_ms, max_response_bytes
        )
        if not 200 <= code < 300:
            raise HttpResponseError(destination, code, _json_or_none(body))
        return RawResponse(code, headers, body)

    async def close(self) -> None:
        """At shutdown: give up on requests still in flight, drop pooled connections."""
        self._closed = True
        for attempt in list(self._in_flight):
            attempt.cancel()
        await self._pool.closeCachedConnections()

    async def _request(
        self,
        method: str,
        destination: str,
        path: str,
        args: dict[str, list[str]] | None,
        data: Any,
        signed: bool,
        timeout_ms: int | None,
        max_response_bytes: int | None,
    ) -> Any:
        code, _, response_body = await self._request_raw(
            method, destination, path, args, data, signed, timeout_ms, max_response_bytes
        )
        try:
            parsed = parse_json(response_body)
        except ValueError:
            parsed = None
            if 200 <= code < 300:
                raise RequestSendFailed(destination, f"HTTP {code} with a non-JSON body") from None
        if not 200 <= code < 300:
            raise HttpResponseError(destination, code, parsed)
        return parsed

    async def _request_raw(
        self,
        method: str,
        destination: str,
        path: str,
        args: dict[str, list[str]] | None,
        data: Any,
        signed: bool,
        timeout_ms: int | None,
        max_response_bytes: int | None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request: (status, headers, body) whatever the status. Raises
        RequestSendFailed when there is no complete answer."""
        if destination == self._server_name:
            raise ValueError(f"refusing a federation request to ourselves ({destination})")
        if not self._config.enabled:
            raise RequestSendFailed(destination, "federation disabled", can_retry=False)
        uri = path
        if args:
            query = [(name, value) for name, values in args.items() for value in values]
            uri += "?" + urlencode(query, quote_via=quote)
        body = None
        if data is not None:
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        timeout_s = (timeout_ms or self._config.request_timeout_ms) / 1000
        max_bytes = max_response_bytes or self._config.max_response_bytes

        start = self._clock.time()
        code_label = "ERR"
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            attempt.cancel()

        if self._closed:
            raise RequestSendFailed(destination, "shutting down", can_retry=False)
        attempt = defer.ensureDeferred(
            self._send(method, destination, uri, data, body, signed, max_bytes)
        )
        self._in_flight.add(attempt)

        def finished(result: Any) -> Any:
            self._in_flight.discard(attempt)
            return result

        attempt.addBoth(finished)
        timer = self._reactor.callLater(timeout_s, time_out)
        try:
            code, headers, response_body = await attempt
            code_label = str(code)
        except Exception as e:
            if timed_out:
                logger.info("%s %s%s: timed out after %gs", method, destination, path, timeout_s)
                raise RequestSendFailed(destination, f"timed out after {timeout_s:g}s") from None
            if isinstance(e, RequestSendFailed):
                logger.info("%s %s%s: %s", method, destination, path, e.reason)
            if isinstance(e, defer.CancelledError) and self._closed:
                raise RequestSendFailed(destination, "shutting down", can_retry=False) from None
            raise
        finally:
            if timer.active():
                timer.cancel()
            REQUESTS.labels(method, code_label).inc()
            REQUEST_SECONDS.labels(method).observe(self._clock.time() - start)

        if 200 <= code < 300:
            logger.debug("%s %s%s: HTTP %d", method, destination, path, code)
        else:
            logger.info("%s %s%s: HTTP %d", method, destination, path, code)
        if code < 500:
            for listener in self._answer_listeners:
                listener(destination)
        return code, headers, response_body

    async def _send(
        self,
        method: str,
        destination: str,
        uri: str,
        data: Any,
        body: bytes | None,
        signed: bool,
        max_bytes: int,
    ) -> tuple[int, dict[str, str], bytes]:
        """One attempt: (status, headers, body). Raises RequestSendFailed, or
        CancelledError."""
        try:
            targets = await self._resolver.resolve(destination)
        except ValueError as e:
            raise RequestSendFailed(destination, str(e), can_retry=False) from None
        except defer.CancelledError:
            raise
        except Exception as e:
            raise RequestSendFailed(destination, f"cannot resolve: {e}") from None

        headers = Headers(
            {
                b"Host": [targets[0].host_header.encode("ascii")],
                b"User-Agent": [_user_agent()],
            }
        )
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
        if signed:
            authorization = sign_request(
                self._signing_key, self._server_name, destination, method, uri, data
            )
            headers.addRawHeader(b"Authorization", authorization.encode("utf-8"))

        verify = (
            self._config.verify_tls
            and destination not in self._config.verify_tls_exempt_destinations
        )
        agent = Agent.usingEndpointFactory(
            self._reactor, _TargetsEndpointFactory(self._connector, targets, verify), self._pool
        )
        # The URI only names the connection pool's key: one pool entry per destination
        # (hex, so "example.org" and "example.org:80" never share connections).
        url = f"matrix-federation://{destination.encode('utf-8').hex()}{uri}".encode("ascii")
        try:
            response = await agent.request(
                method.encode("ascii"),
                url,
                headers,
                FileBodyProducer(io.BytesIO(body)) if body is not None else None,
            )
            response_body = await read_limited_body(response, max_bytes)
        except defer.CancelledError:
            raise
        except BlockedAddressError as e:
            raise RequestSendFailed(destination, str(e), can_retry=False) from None
        except BodyTooLargeError as e:
            raise RequestSendFailed(destination, str(e)) from None
        except Exception as e:
            raise RequestSendFailed(destination, _describe(e)) from None
        response_headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        return response.code, response_headers, response_body


def _json_or_none(body: bytes) -> Any:
    try:
        return parse_json(body)
    except ValueError:
        return None


def _describe(e: Exception) -> str:
    # ResponseNeverReceived / ResponseFailed wrap a list of Failures: name the first.
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = reasons[0].value
        return f"{type(e).__name__}: {type(inner).__name__}: {inner}"
    return f"{type(e).__name__}: {e}"


def _user_agent() -> bytes:
    from homeserver import __version__

    return f"Heddle/{__version__}".encode("ascii")
