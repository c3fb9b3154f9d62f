"""Requests to identity servers (spec: Identity Service API v2): for third-party invites,
who an address belongs to and storing an invite for an address nobody has bound yet; for
accounts, binding a validated address to a Matrix ID (with the client's identity access
token) and unbinding it (signed by this server, X-Matrix).

The identity server is the inviting client's choice, so connections go only to addresses
outside `identity_servers.ip_range_blocklist`, as for push gateways (`CheckedEndpointFactory`),
over https with certificates checked unless `identity_servers.verify_tls` is off.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any, cast
from urllib.parse import quote

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer

from federation.discovery import IPRangeFilter, getaddrinfo_resolver, read_limited_body
from homeserver.config import IdentityServersConfig
from homeserver.errors import Codes, MatrixError
from homeserver.events.hashing import unpadded_base64
from homeserver.identifiers import is_valid_server_name
from homeserver.push.gateway_client import CheckedEndpointFactory

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAX_RESPONSE_BYTES = 64 * 1024


class IdentityServerError(Exception):
    """The identity server could not be reached, or answered with an error: then `code` is
    its HTTP status and `errcode`/`error` what its JSON body said, if anything."""

    def __init__(
        self,
        message: str,
        code: int | None = None,
        errcode: str | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.errcode = errcode
        self.error = error


def lookup_hash(medium: str, address: str, pepper: str) -> str:
    """Spec (identity service, "Client behaviour" of lookups): SHA-256 of
    "<address> <medium> <pepper>", unpadded URL-safe base64."""
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return unpadded_base64(digest, urlsafe=True)


def check_id_access_token(token: str) -> None:
    """It goes in an Authorization header: printable ASCII without spaces."""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid id_access_token")


def check_id_server(id_server: str) -> None:
    """`id_server` is a host name with an optional port (spec: "The hostname+port of the
    identity server"), nothing more."""
    if not is_valid_server_name(id_server):
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid id_server: {id_server!r}")


class IdentityServerClient:
    def __init__(self, reactor: Any, config: IdentityServersConfig) -> None:
        self._reactor = reactor
        self._timeout_s = config.request_timeout_ms / 1000
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent.usingEndpointFactory(
            reactor,
            CheckedEndpointFactory(
                reactor,
                IPRangeFilter(config.ip_range_blocklist, config.ip_range_allowlist),
                getaddrinfo_resolver(reactor),
                self._timeout_s,
                config.verify_tls,
            ),
            self._pool,
        )

    async def lookup(
        self, id_server: str, access_token: str, medium: str, address: str
    ) -> str | None:
        """The Matrix ID the address is bound to at the identity server, or None."""
        details = await self._request("GET", id_server, "/hash_details", access_token)
        algorithms = details.get("algorithms")
        pepper = details.get("lookup_pepper")
        if not isinstance(algorithms, list):
            raise IdentityServerError("hash_details has no algorithms")
        if "sha256" in algorithms and isinstance(pepper, str):
            key = lookup_hash(medium, address, pepper)
            body = {"addresses": [key], "algorithm": "sha256", "pepper": pepper}
        elif "none" in algorithms:
            key = f"{address} {medium}"
            body = {"addresses": [key], "algorithm": "none", "pepper": pepper or ""}
        else:
            raise IdentityServerError(f"no lookup algorithm in common: {algorithms!r}")
        answer = await self._request("POST", id_server, "/lookup", access_token, body)
        mappings = answer.get("mappings")
        mxid = mappings.get(key) if isinstance(mappings, dict) else None
        return mxid if isinstance(mxid, str) else None

    async def store_invite(self, id_server: str, access_token: str, invite: JsonDict) -> JsonDict:
        """POST /store-invite: the token, public keys and display name of the new invite."""
        return await self._request("POST", id_server, "/store-invite", access_token, invite)

    async def bind(
        self, id_server: str, access_token: str, sid: str, client_secret: str, mxid: str
    ) -> JsonDict:
        """POST /3pid/bind: the identity server binds the address its validation session
        `sid` proved to `mxid`; its answer (medium, address, mxid, signatures...)."""
        body = {"sid": sid, "client_secret": client_secret, "mxid": mxid}
        return await self._request("POST", id_server, "/3pid/bind", access_token, body)

    async def unbind(self, id_server: str, authorization: str, body: JsonDict) -> None:
        """POST /3pid/unbind with `body` ({"mxid", "threepid": {"medium", "address"}}),
        authenticated by this server's X-Matrix `authorization` header."""
        await self._request("POST", id_server, "/3pid/unbind", None, body, authorization)

    async def key_is_valid(self, key_validity_url: str, public_key: str) -> bool:
        """Whether the identity server still vouches for `public_key` (spec:
        m.room.third_party_invite's key_validity_url, queried with `public_key`)."""
        if not key_validity_url.startswith("https://"):
            raise IdentityServerError(f"key_validity_url is not https: {key_validity_url!r}")
        separator = "&" if "?" in key_validity_url else "?"
        url = f"{key_validity_url}{separator}public_key={quote(public_key, safe='')}"
        request = defer.ensureDeferred(self._send("GET", url, None, None))
        request.addTimeout(self._timeout_s, self._reactor)
        try:
            answer = await request
        except IdentityServerError:
            raise
        except Exception as e:
            raise IdentityServerError(f"GET {url}: {e}") from None
        return answer.get("valid") is True

    async def _request(
        self,
        method: str,
        id_server: str,
        path: str,
        access_token: str | None,
        body: JsonDict | None = None,
        authorization: str | None = None,
    ) -> JsonDict:
        url = f"https://{id_server}/_matrix/identity/v2{path}"
        request = defer.ensureDeferred(
            self._send(method, url, access_token, body, authorization)
        )
        request.addTimeout(self._timeout_s, self._reactor)
        try:
            answer = await request
        except IdentityServerError:
            raise
        except Exception as e:
            logger.info("identity server %s: %s %s failed: %r", id_server, method, path, e)
            raise IdentityServerError(f"{method} {url}: {e}") from None
        return answer

    async def _send(
        self,
        method: str,
        url: str,
        access_token: str | None,
        body: JsonDict | None,
        authorization: str | None = None,
    ) -> JsonDict:
        headers = Headers({b"User-Agent": [b"Heddle (identity)"]})
        if access_token is not None:
            headers.addRawHeader(b"Authorization", b"Bearer " + access_token.encode("ascii"))
        elif authorization is not None:
            headers.addRawHeader(b"Authorization", authorization.encode("utf-8"))
        producer: IBodyProducer | None = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
            producer = cast(IBodyProducer, FileBodyProducer(io.BytesIO(payload)))
        response = await self._agent.request(method.encode("ascii"), url.encode("ascii"),
                                             headers, producer)
        raw = await read_limited_body(response, MAX_RESPONSE_BYTES)
        if not 200 <= response.code < 300:
            errcode, error = _matrix_error(raw)
            raise IdentityServerError(
                f"{url} answered HTTP {response.code}", response.code, errcode, error
            )
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise IdentityServerError(f"{url} answered with something that is not JSON") from None
        if not isinstance(parsed, dict):
            raise IdentityServerError(f"{url} answered with something that is not an object")
        return parsed

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


def _matrix_error(raw: bytes) -> tuple[str | None, str | None]:
    """The errcode and error of an error answer's JSON body, when it has them."""
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    errcode, error = parsed.get("errcode"), parsed.get("error")
    return (
        errcode if isinstance(errcode, str) else None,
        error if isinstance(error, str) else None,
    )
