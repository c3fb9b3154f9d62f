"""Posting to push gateways over HTTP(S): Twisted's `Agent` (certificates checked unless
`pushers.verify_tls` is off), pooled connections, a timeout per request, a bounded answer.

A pusher's URL is the user's choice, so a new connection goes only to addresses outside
`pushers.ip_range_blocklist` (private and loopback ranges by default; a gateway on the local
network is allowed with `ip_range_allowlist`): the host is resolved, every address checked,
and the connection made to a checked address, so DNS cannot switch it afterwards.
"""

from __future__ import annotations

import io
import ipaddress
import json
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IProtocol
from twisted.web.client import URI, Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from federation.discovery import (
    BlockedAddressError,
    HostResolve,
    IPRangeFilter,
    connect_to_first,
    getaddrinfo_resolver,
    is_ip_literal,
    read_limited_body,
)
from homeserver.config import ConfigError, PushersConfig

# The largest gateway answer read; it should be `{"rejected": [...]}`.
MAX_RESPONSE_BYTES = 64 * 1024


class GatewayHttpError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"the gateway answered HTTP {code}")
        self.code = code


def _timed_out(result: Any, timeout: float) -> Any:
    # The Agent reports a cancelled request as ResponseNeverReceived; what cut it short was
    # the timeout.
    raise defer.TimeoutError(f"no answer within {timeout} s")


def gateway_networks(config: PushersConfig) -> IPRangeFilter:
    for option in ("ip_range_blocklist", "ip_range_allowlist"):
        for text in getattr(config, option):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConfigError(f"pushers.{option}: {text!r} is not an IP range") from None
    return IPRangeFilter(config.ip_range_blocklist, config.ip_range_allowlist)


class CheckedEndpoint:
    """Connects to the first address of the URL's host that the filter allows, refusing
    the host if any of its addresses is blocked (TLS on top for https)."""

    def __init__(
        self,
        reactor: Any,
        uri: URI,
        ip_filter: IPRangeFilter,
        resolve_host: HostResolve,
        timeout_s: float,
        verify_tls: bool,
    ) -> None:
        self._reactor = reactor
        self._uri = uri
        self._filter = ip_filter
        self._resolve_host = resolve_host
        self._timeout_s = timeout_s
        self._verify_tls = verify_tls

    def connect(self, protocol_factory: Any) -> defer.Deferred[IProtocol]:
        return defer.ensureDeferred(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: Any) -> IProtocol:
        host = self._uri.host.decode("ascii")
        if host.startswith("["):
            host = host[1:-1]
        addresses = [host] if is_ip_literal(host) else await self._resolve_host(host)
        if not addresses:
            raise DNSLookupError(f"{host} has no addresses")
        blocked = [a for a in addresses if not self._filter.allows(a)]
        if blocked:
            raise BlockedAddressError(f"{host} resolves to blocked address {blocked[0]}")
        return await connect_to_first(
            self._reactor, addresses, host, self._uri.port, self._uri.scheme == b"https",
            self._timeout_s, protocol_factory, verify=self._verify_tls,
        )


@implementer(IAgentEndpointFactory)
class CheckedEndpointFactory:
    def __init__(
        self,
        reactor: Any,
        ip_filter: IPRangeFilter,
        resolve_host: HostResolve,
        timeout_s: float,
        verify_tls: bool,
    ) -> None:
        self._reactor = reactor
        self._filter = ip_filter
        self._resolve_host = resolve_host
        self._timeout_s = timeout_s
        self._verify_tls = verify_tls

    def endpointForURI(self, uri: URI) -> CheckedEndpoint:
        return CheckedEndpoint(
            self._reactor, uri, self._filter, self._resolve_host, self._timeout_s,
            self._verify_tls,
        )


class PushGatewayClient:
    def __init__(
        self, reactor: Any, config: PushersConfig, resolve_host: HostResolve | None = None
    ) -> None:
        self._reactor = reactor
        self._timeout_s = config.gateway_timeout_ms / 1000
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent.usingEndpointFactory(
            reactor,
            CheckedEndpointFactory(
                reactor,
                gateway_networks(config),
                resolve_host or getaddrinfo_resolver(reactor),
                self._timeout_s,
                config.verify_tls,
            ),
            self._pool,
        )
        self._in_flight: set[defer.Deferred[bytes]] = set()

    async def post_json(self, url: str, body: dict[str, Any]) -> bytes:
        """POST `body` to `url`; the answer's body if its status is 2xx. Otherwise
        GatewayHttpError, `defer.TimeoutError`, BlockedAddressError, or whatever the
        connection failed with."""
        request = defer.ensureDeferred(self._post(url, body))
        request.addTimeout(self._timeout_s, self._reactor, onTimeoutCancel=_timed_out)
        self._in_flight.add(request)
        try:
            return await request
        finally:
            self._in_flight.discard(request)

    async def _post(self, url: str, body: dict[str, Any]) -> bytes:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = Headers({
            b"Content-Type": [b"application/json"],
            b"User-Agent": [_user_agent()],
        })
        producer = cast(IBodyProducer, FileBodyProducer(io.BytesIO(payload)))
        response = await self._agent.request(b"POST", url.encode("ascii"), headers, producer)
        answer = await read_limited_body(response, MAX_RESPONSE_BYTES)
        if not 200 <= response.code < 300:
            raise GatewayHttpError(response.code)
        return answer

    def cancel_requests(self) -> None:
        """Abandon every request in flight (shutting down)."""
        for request in list(self._in_flight):
            request.cancel()

    async def close(self) -> None:
        self.cancel_requests()
        await self._pool.closeCachedConnections()


def _user_agent() -> bytes:
    from homeserver import __version__

    return f"Heddle/{__version__} (push)".encode("ascii")
