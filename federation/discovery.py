"""Finding and reaching another homeserver: server name resolution ("Resolving server names" in
the server-server spec), the `/.well-known/matrix/server` fetch and its cache, SRV lookups,
hostname -> IP resolution with the IP range block list, and TLS connections.

`ServerResolver.resolve(server_name)` turns a server name into an ordered list of `Target`s:
where to connect, which `Host` header to send, and which name the certificate must be valid
for. DNS (SRV) and the well-known fetch are constructor arguments, so tests can fake them.
`TlsConnector` then reaches one of those targets: it resolves the host to IP addresses
itself, refuses blocked ones, and connects with TLS (SNI and certificate checks for the
target's `tls_server_name`). Both the federation client and the well-known fetch use it.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS, platformTrust
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    RedirectAgent,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from zope.interface import implementer

from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.config import ConfigError, FederationConfig
from homeserver.events.canonical import load_json
from homeserver.identifiers import is_valid_server_name

logger = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448

# Well-known cache periods (spec: default 24 h, cap 48 h, errors up to an hour with
# exponential backoff for repeated failures).
WELL_KNOWN_DEFAULT_CACHE_S = 24 * 3600
WELL_KNOWN_MAX_CACHE_S = 48 * 3600
WELL_KNOWN_MIN_CACHE_S = 5 * 60
WELL_KNOWN_INVALID_CACHE_S = 3600
WELL_KNOWN_FAILURE_MIN_CACHE_S = 5 * 60
WELL_KNOWN_FAILURE_MAX_CACHE_S = 3600
WELL_KNOWN_CACHE_MAX_ENTRIES = 10_000
WELL_KNOWN_TIMEOUT_S = 10.0
WELL_KNOWN_MAX_BYTES = 50 * 1024
WELL_KNOWN_MAX_REDIRECTS = 5

CONNECT_TIMEOUT_S = 10.0
SRV_LOOKUP_TIMEOUTS = (1, 3, 6)


@dataclass(frozen=True)
class Target:
    """One place to send a server's requests. `host_to_connect` is a hostname or a bare IP
    literal (no brackets); `tls_server_name` is what the certificate must be valid for (and
    the SNI, unless it is an IP literal)."""

    host_to_connect: str
    port: int
    host_header: str
    tls_server_name: str


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class WellKnownResponse:
    """The final answer (after redirects) to GET https://<host>/.well-known/matrix/server.
    `headers` maps lower-case names to the last value given."""

    code: int
    body: bytes
    headers: dict[str, str]


SrvLookup = Callable[[str], Awaitable[list[SrvRecord]]]
WellKnownFetch = Callable[[str], Awaitable[WellKnownResponse]]
HostResolve = Callable[[str], Awaitable[list[str]]]


class BlockedAddressError(Exception):
    """Every address a host resolves to is in a blocked IP range."""


class BodyTooLargeError(Exception):
    """A response body is larger than the caller accepts."""


# -- server names ------------------------------------------------------------------------


def split_server_name(name: str) -> tuple[str, int | None]:
    """`host[:port]` -> (host, port). IPv6 literals lose their brackets. Raises ValueError for
    anything that is not a valid server name."""
    if not is_valid_server_name(name):
        raise ValueError(f"{name!r} is not a valid server name")
    if name.startswith("["):
        end = name.index("]")
        host, rest = name[1:end], name[end + 1:]
        return host, int(rest[1:]) if rest else None
    if ":" in name:
        host, port = name.rsplit(":", 1)
        return host.lower(), int(port)
    return name.lower(), None


def is_ip_literal(host: str) -> bool:
    """A bare IPv4 or IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def order_srv_records(records: list[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 order: lowest priority first; within a priority, a weighted random order."""
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        remaining = [r for r in records if r.priority == priority]
        while remaining:
            total = sum(r.weight for r in remaining)
            if total == 0:
                rng.shuffle(remaining)
                ordered.extend(remaining)
                break
            point = rng.random() * total
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running > point:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


async def lookup_srv_records(name: str) -> list[SrvRecord]:
    """SRV records for `name` through twisted.names (non-blocking). No such name, no
    records, or a DNS failure all give an empty list: resolution falls through to the next
    step, as the spec's steps do when no SRV record is found."""
    from twisted.names import client as dns_client
    from twisted.names import dns
    from twisted.names.error import DNSNameError

    try:
        answers, _authority, _additional = await dns_client.lookupService(
            name, timeout=SRV_LOOKUP_TIMEOUTS
        )
    except DNSNameError:
        return []
    except Exception as e:
        logger.info("SRV lookup of %s failed: %s", name, e)
        return []
    records = []
    for rr in answers:
        if rr.type != dns.SRV:
            continue
        payload = rr.payload
        target = payload.target.name.decode("ascii", "replace")
        records.append(SrvRecord(payload.priority, payload.weight, payload.port, target))
    return records


# -- the resolver --------------------------------------------------------------------------


@dataclass
class _WellKnownEntry:
    server: str | None  # the m.server value, or None: no (valid) delegation
    expires_at: float
    failures: int  # consecutive fetch failures (network errors), for the backoff


class ServerResolver:
    """Server name -> ordered `Target`s, per the spec. Well-known answers (and their absence)
    are cached per host; SRV answers are left to the DNS resolver's own cache."""

    def __init__(
        self,
        clock: Clock,
        *,
        fetch_well_known: WellKnownFetch,
        lookup_srv: SrvLookup = lookup_srv_records,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._fetch_well_known = fetch_well_known
        self._lookup_srv = lookup_srv
        self._rng = rng or random.Random()
        # host -> its answer, also past `expires_at`: a stale entry still counts failures and
        # answers through a transient failure (so a lookup finding it counts as a hit).
        self._well_known: LruCache[str, _WellKnownEntry] = LruCache(
            "well_known", WELL_KNOWN_CACHE_MAX_ENTRIES
        )
        self._in_flight: dict[str, defer.Deferred[str | None]] = {}

    async def resolve(self, server_name: str) -> list[Target]:
        """Raises ValueError for an invalid server name."""
        host, port = split_server_name(server_name)
        # 1. An IP literal, with its port or 8448.
        if is_ip_literal(host):
            return [Target(host, port or DEFAULT_FEDERATION_PORT, server_name, host)]
        # 2. A hostname with an explicit port: no delegation at all.
        if port is not None:
            return [Target(host, port, server_name, host)]
        # 3. Delegation through /.well-known/matrix/server.
        delegated = await self.well_known_server(host)
        if delegated is not None:
            d_host, d_port = split_server_name(delegated)
            if is_ip_literal(d_host):
                return [Target(d_host, d_port or DEFAULT_FEDERATION_PORT, delegated, d_host)]
            if d_port is not None:
                return [Target(d_host, d_port, delegated, d_host)]
            return await self._srv_or_default(d_host)
        # 4-6. SRV records of the server name itself, else port 8448.
        return await self._srv_or_default(host)

    async def _srv_or_default(self, host: str) -> list[Target]:
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            records = [
                r for r in await self._lookup_srv(f"{service}.{host}")
                if r.target.rstrip(".") not in ("", ".")
            ]
            if records:
                return [
                    Target(r.target.rstrip(".").lower(), r.port, host, host)
                    for r in order_srv_records(records, self._rng)
                ]
        return [Target(host, DEFAULT_FEDERATION_PORT, host, host)]

    async def well_known_server(self, host: str) -> str | None:
        """The `m.server` a host delegates to, or None; cached."""
        entry = self._well_known.get(host)
        if entry is not None and entry.expires_at > self._clock.time():
            return entry.server
        pending = self._in_flight.get(host)
        if pending is None:
            pending = defer.ensureDeferred(self._fetch_and_cache(host, entry))
            self._in_flight[host] = pending

            def done(result: Any) -> Any:
                self._in_flight.pop(host, None)
                return result

            pending.addBoth(done)
        # Each caller waits on its own Deferred, so one caller's cancellation (a timeout)
        # neither cancels the shared fetch nor takes its result from the others.
        waiter: defer.Deferred[str | None] = defer.Deferred()

        def deliver(result: Any) -> Any:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
            return result

        pending.addBoth(deliver)
        return await waiter

    async def _fetch_and_cache(self, host: str, previous: _WellKnownEntry | None) -> str | None:
        now = self._clock.time()
        try:
            response = await self._fetch_well_known(host)
        except Exception as e:
            failures = (previous.failures if previous is not None else 0) + 1
            period = min(
                WELL_KNOWN_FAILURE_MIN_CACHE_S * 2 ** (failures - 1),
                WELL_KNOWN_FAILURE_MAX_CACHE_S,
            )
            logger.info("well-known fetch for %s failed (%s); retrying in %ds", host, e, period)
            # A host that answered before keeps its last answer through a transient failure.
            server = previous.server if previous is not None else None
            self._well_known.set(host, _WellKnownEntry(server, now + period, failures))
            return server
        server = parse_well_known(response)
        if server is None:
            period = _cache_period(response.headers, now, WELL_KNOWN_INVALID_CACHE_S)
            period = min(period, WELL_KNOWN_INVALID_CACHE_S)
            logger.debug("no valid well-known for %s (HTTP %d)", host, response.code)
        else:
            period = _cache_period(response.headers, now, WELL_KNOWN_DEFAULT_CACHE_S)
            logger.debug("%s delegates to %s", host, server)
        self._well_known.set(host, _WellKnownEntry(server, now + period, 0))
        return server


def parse_well_known(response: WellKnownResponse) -> str | None:
    """The `m.server` of a 200 answer holding a JSON object with a valid server name, else
    None (the spec: "if the response is invalid ... skip to step 4")."""
    if response.code != 200:
        return None
    try:
        body = load_json(response.body)
    except ValueError:
        return None
    server = body.get("m.server") if isinstance(body, dict) else None
    if not isinstance(server, str) or not is_valid_server_name(server):
        return None
    return server


def _cache_period(headers: dict[str, str], now: float, default: float) -> float:
    """Seconds to cache a response for, from Cache-Control (max-age, no-cache, no-store) or
    Expires, else `default`; always within [WELL_KNOWN_MIN_CACHE_S, WELL_KNOWN_MAX_CACHE_S]."""
    period: float | None = None
    cache_control = headers.get("cache-control")
    if cache_control:
        for directive in cache_control.lower().split(","):
            name, _, value = directive.strip().partition("=")
            if name in ("no-store", "no-cache"):
                period = 0
                break
            if name == "max-age":
                try:
                    period = int(value.strip().strip('"'))
                except ValueError:
                    pass
    if period is None and headers.get("expires"):
        try:
            period = parsedate_to_datetime(headers["expires"]).timestamp() - now
        except (TypeError, ValueError, IndexError):
            period = 0  # RFC 9111: an invalid Expires means "already expired"
    if period is None:
        period = default
    return max(WELL_KNOWN_MIN_CACHE_S, min(period, WELL_KNOWN_MAX_CACHE_S))


# -- reaching a host -----------------------------------------------------------------------


class IPRangeFilter:
    """The federation IP range block list and its exceptions. The unspecified addresses
    (0.0.0.0, ::) and multicast are never valid peers and are always refused."""

    def __init__(self, blocklist: list[str], allowlist: list[str]) -> None:
        self._blocked = [_network(r, "ip_range_blocklist") for r in blocklist]
        self._allowed = [_network(r, "ip_range_allowlist") for r in allowlist]

    def allows(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone index
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        if any(a.is_unspecified or a.is_multicast for a in candidates):
            return False
        if any(a in net for a in candidates for net in self._allowed if a.version == net.version):
            return True
        return not any(
            a in net for a in candidates for net in self._blocked if a.version == net.version
        )


def _network(text: str, option: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"federation.{option}: {text!r} is not an IP range") from None


def getaddrinfo_resolver(reactor: Any) -> HostResolve:
    """Hostname -> IP addresses (CNAME, AAAA, A) with the system resolver, on the reactor's
    thread pool so the reactor never blocks."""

    async def resolve(host: str) -> list[str]:
        try:
            infos = await deferToThreadPool(
                reactor, reactor.getThreadPool(), socket.getaddrinfo,
                host, None, 0, socket.SOCK_STREAM,
            )
        except OSError as e:
            raise DNSLookupError(f"{host}: {e}") from None
        addresses: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        return addresses

    return resolve


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """TLS that sends SNI (for a DNS name) but accepts any certificate."""

    _context: SSL.Context | None = None

    def __init__(self, server_name: str) -> None:
        self._sni = None if is_ip_literal(server_name) else server_name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        if _UnverifiedClientTLS._context is None:
            _UnverifiedClientTLS._context = CertificateOptions().getContext()
        connection = SSL.Connection(_UnverifiedClientTLS._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


def client_tls_options(server_name: str, verify: bool) -> Any:
    """Client TLS for `server_name`: SNI unless it is an IP literal; with `verify`, the
    certificate must chain to the system CA store and be valid for the name (or address)."""
    if verify:
        return optionsForClientTLS(server_name, trustRoot=platformTrust())
    return _UnverifiedClientTLS(server_name)


async def connect_to_first(
    reactor: Any,
    addresses: list[str],
    host: str,
    port: int,
    https: bool,
    timeout_s: float,
    protocol_factory: Any,
    verify: bool = True,
) -> IProtocol:
    """Connect to the first of `host`'s already-checked `addresses` that answers (TLS for
    `host` on top with `https`, its certificate checked unless `verify` is false); the last
    failure if none does. For HTTP clients that must reach only addresses they have vetted
    (URL previews, push gateways)."""
    last_error: Exception | None = None
    for address in addresses:
        tcp_class: Any = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint: Any = tcp_class(reactor, address, port, timeout=timeout_s)
        if https:
            endpoint = wrapClientTLS(client_tls_options(host, verify=verify), endpoint)
        try:
            protocol: IProtocol = await endpoint.connect(protocol_factory)
            return protocol
        except defer.CancelledError:
            raise
        except Exception as e:
            last_error = e
    if last_error is None:
        raise DNSLookupError(f"{host} has no addresses")
    raise last_error


class TlsConnector:
    """Connects to hosts over TLS, after resolving them to addresses the IP range filter
    allows."""

    def __init__(
        self,
        reactor: Any,
        ip_filter: IPRangeFilter,
        resolve_host: HostResolve | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self._reactor = reactor
        self._ip_filter = ip_filter
        self._resolve_host = resolve_host or getaddrinfo_resolver(reactor)
        self._connect_timeout_s = connect_timeout_s

    async def connect(
        self, protocol_factory: Any, host: str, port: int, tls_server_name: str, verify: bool
    ) -> IProtocol:
        """Try each allowed address of `host` in turn. Raises BlockedAddressError when every
        address is blocked, else the last connection error."""
        addresses = [host] if is_ip_literal(host) else await self._resolve_host(host)
        if not addresses:
            raise DNSLookupError(f"{host} has no addresses")
        allowed = [a for a in addresses if self._ip_filter.allows(a)]
        if not allowed:
            raise BlockedAddressError(f"{host} resolves only to blocked addresses")
        last_error: Exception | None = None
        for address in allowed:
            tcp_class: Any = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            tcp = tcp_class(self._reactor, address, port, timeout=self._connect_timeout_s)
            endpoint: Any = wrapClientTLS(client_tls_options(tls_server_name, verify), tcp)
            try:
                protocol: IProtocol = await endpoint.connect(protocol_factory)
                return protocol
            except defer.CancelledError:
                raise
            except Exception as e:
                logger.debug("connecting to %s (%s) port %d failed: %s", host, address, port, e)
                last_error = e
        assert last_error is not None
        raise last_error

    async def connect_first(
        self, protocol_factory: Any, targets: list[Target], verify: bool
    ) -> IProtocol:
        """Connect to the first target that accepts. BlockedAddressError only when every
        target was blocked."""
        errors: list[Exception] = []
        for target in targets:
            try:
                return await self.connect(
                    protocol_factory,
                    target.host_to_connect,
                    target.port,
                    target.tls_server_name,
                    verify,
                )
            except defer.CancelledError:
                raise
            except Exception as e:
                errors.append(e)
        if not errors:
            raise DNSLookupError("no targets")
        others = [e for e in errors if not isinstance(e, BlockedAddressError)]
        raise others[-1] if others else errors[-1]


# -- reading responses ---------------------------------------------------------------------


_RESPONSE_DONE = Failure(ResponseDone())


class _BodyCollector(Protocol):
    def __init__(self, deferred: defer.Deferred[bytes], max_bytes: int) -> None:
        self._deferred = deferred
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0

    def connectionMade(self) -> None:
        if self._deferred.called:  # refused on Content-Length before any data came
            self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._deferred.called:
            return
        self._size += len(data)
        if self._size > self._max_bytes:
            self._deferred.errback(BodyTooLargeError(f"response over {self._max_bytes} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
        if self._deferred.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._deferred.callback(b"".join(self._parts))
        else:
            self._deferred.errback(reason)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def read_limited_body(response: Any, max_bytes: int) -> defer.Deferred[bytes]:
    """The whole body, or BodyTooLargeError (the connection is then dropped) once it goes past
    `max_bytes`. Cancelling the Deferred drops the connection too."""
    collector: _BodyCollector | None = None

    def cancel(_: defer.Deferred[bytes]) -> None:
        if collector is not None:
            collector.abort()

    deferred: defer.Deferred[bytes] = defer.Deferred(cancel)
    collector = _BodyCollector(deferred, max_bytes)
    if response.length is not UNKNOWN_LENGTH and response.length > max_bytes:
        deferred.errback(BodyTooLargeError(f"response of {response.length} bytes"))
    response.deliverBody(collector)
    return deferred


# -- the real well-known fetch ---------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class _HttpsEndpointFactory:
    def __init__(self, connector: TlsConnector, verify: bool) -> None:
        self._connector = connector
        self._verify = verify

    def endpointForURI(self, uri: URI) -> Any:
        from twisted.web.error import SchemeNotSupported

        if uri.scheme != b"https":
            raise SchemeNotSupported(f"well-known redirect to a non-https URI: {uri.scheme!r}")
        host = uri.host.decode("ascii")
        if host.startswith("["):
            host = host[1:-1]
        return _ConnectorEndpoint(self._connector, host, uri.port, self._verify)


class _ConnectorEndpoint:
    def __init__(self, connector: TlsConnector, host: str, port: int, verify: bool) -> None:
        self._connector = connector
        self._host = host
        self._port = port
        self._verify = verify

    def connect(self, protocol_factory: Any) -> defer.Deferred[IProtocol]:
        return defer.ensureDeferred(
            self._connector.connect(protocol_factory, self._host, self._port, self._host, self._verify)
        )


class HttpsWellKnownFetcher:
    """GET https://<host>/.well-known/matrix/server, following up to 5 redirects (https only),
    through the IP range filter, with a 10 s timeout and a 50 KiB body cap. The certificate
    is checked like federation's (`verify_tls`, exempt destinations). `port` is for tests."""

    def __init__(
        self,
        reactor: Any,
        config: FederationConfig,
        connector: TlsConnector,
        *,
        port: int = 443,
        timeout_s: float = WELL_KNOWN_TIMEOUT_S,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._connector = connector
        self._port = port
        self._timeout_s = timeout_s

    async def __call__(self, host: str) -> WellKnownResponse:
        verify = self._config.verify_tls and host not in self._config.verify_tls_exempt_destinations
        agent = RedirectAgent(
            Agent.usingEndpointFactory(self._reactor, _HttpsEndpointFactory(self._connector, verify)),
            redirectLimit=WELL_KNOWN_MAX_REDIRECTS,
        )
        netloc = f"[{host}]" if ":" in host else host
        url = f"https://{netloc}:{self._port}/.well-known/matrix/server".encode("ascii")

        async def fetch() -> WellKnownResponse:
            response = await agent.request(
                b"GET", url, Headers({b"User-Agent": [_user_agent()]})
            )
            body = await read_limited_body(response, WELL_KNOWN_MAX_BYTES)
            headers = {
                name.decode("latin-1").lower(): values[-1].decode("latin-1")
                for name, values in response.headers.getAllRawHeaders()
            }
            return WellKnownResponse(response.code, body, headers)

        d = defer.ensureDeferred(fetch())
        d.addTimeout(self._timeout_s, self._reactor)
        return await d


def _user_agent() -> bytes:
    from homeserver import __version__

    return f"Heddle/{__version__}".encode("ascii")
