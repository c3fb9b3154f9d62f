"""A push gateway for tests: a twisted.web server on loopback that records what homeservers
post to /_matrix/push/v1/notify and answers as the test tells it to."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, ssl
from twisted.web import resource, server

from homeserver.tls import generate_self_signed_certificate

NOTIFY_PATH = "/_matrix/push/v1/notify"

# How the gateway answers one request.
OK = "ok"  # 200 {"rejected": []}
ERROR = "error"  # 500
GARBAGE = "garbage"  # 200 with a body that is not JSON
HANG = "hang"  # no answer at all


@dataclass
class Reject:
    """200 {"rejected": pushkeys}."""

    pushkeys: list[str]


@dataclass
class Received:
    path: str
    body: dict[str, Any]

    @property
    def notification(self) -> dict[str, Any]:
        return self.body["notification"]


@dataclass
class _Waiter:
    count: int
    deferred: defer.Deferred[list[Received]] = field(default_factory=defer.Deferred)


class _NotifyResource(resource.Resource):
    isLeaf = True

    def __init__(self, gateway: PushGateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_POST(self, request: server.Request) -> Any:
        return self._gateway.handle(request)


class PushGateway:
    """Start with `await PushGateway.start(test)`; it stops when the test ends. Answers
    are taken from `answers` in order, then `default`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: list[Any] = []
        self.default: Any = OK
        self._waiters: list[_Waiter] = []
        self._hanging: list[server.Request] = []
        self._port: Any = None
        self.scheme = "http"

    @classmethod
    def start(cls, test: Any, tls: bool = False) -> PushGateway:
        """With `tls`, over https with a self-signed certificate for 127.0.0.1."""
        gateway = cls()
        site = server.Site(_NotifyResource(gateway))
        listener: Any = reactor
        if tls:
            folder = Path(test.mktemp())
            folder.mkdir()
            cert, key = folder / "gateway.crt", folder / "gateway.key"
            generate_self_signed_certificate(cert, key, "127.0.0.1")
            options = ssl.PrivateCertificate.loadPEM(
                cert.read_text() + key.read_text()
            ).options()
            gateway._port = listener.listenSSL(0, site, options, interface="127.0.0.1")
            gateway.scheme = "https"
        else:
            gateway._port = listener.listenTCP(0, site, interface="127.0.0.1")
        test.addCleanup(gateway.stop)
        return gateway

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._port.getHost().port}{NOTIFY_PATH}"

    def stop(self) -> Any:
        for request in self._hanging:
            if request.transport is not None:
                request.transport.abortConnection()
        self._hanging = []
        return self._port.stopListening()

    def handle(self, request: server.Request) -> Any:
        assert request.content is not None
        body = json.loads(request.content.read())
        self.received.append(Received(request.path.decode(), body))
        answer = self.answers.pop(0) if self.answers else self.default
        for waiter in list(self._waiters):
            if len(self.received) >= waiter.count:
                self._waiters.remove(waiter)
                waiter.deferred.callback(list(self.received))
        if answer == HANG:
            self._hanging.append(request)
            return server.NOT_DONE_YET
        if answer == ERROR:
            request.setResponseCode(500)
            return b'{"errcode": "M_UNKNOWN"}'
        if answer == GARBAGE:
            return b"<html>this is not a push gateway</html>"
        rejected = answer.pushkeys if isinstance(answer, Reject) else []
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"rejected": rejected}).encode()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> defer.Deferred[list[Received]]:
        """Fires with everything received once `count` requests have come."""
        waiter = _Waiter(count)
        if len(self.received) >= count:
            waiter.deferred.callback(list(self.received))
        else:
            self._waiters.append(waiter)
        waiter.deferred.addTimeout(timeout_s, reactor)
        return waiter.deferred
