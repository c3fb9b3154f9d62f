"""Posting to push gateways over HTTP(S): Twisted's `Agent` (certificates checked), pooled
connections, a timeout per request, a bounded answer."""

from __future__ import annotations

import io
import json
from typing import Any, cast

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer

from federation.discovery import read_limited_body

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


class PushGatewayClient:
    def __init__(self, reactor: Any, timeout_s: float) -> None:
        self._reactor = reactor
        self._timeout_s = timeout_s
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent(reactor, pool=self._pool)
        self._in_flight: set[defer.Deferred[bytes]] = set()

    async def post_json(self, url: str, body: dict[str, Any]) -> bytes:
        """POST `body` to `url`; the answer's body if its status is 2xx. Otherwise
        GatewayHttpError, `defer.TimeoutError`, or whatever the connection failed with."""
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
