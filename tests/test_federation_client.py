"""The outbound federation client against a real HTTPS server on loopback (self-signed
certificate), and the real well-known fetch against the same server."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import verify_signed_json
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from federation.client import FederationClient, build_path
from federation.discovery import (
    HttpsWellKnownFetcher,
    IPRangeFilter,
    ServerResolver,
    SrvRecord,
    TlsConnector,
)
from federation.errors import HttpResponseError, RequestSendFailed
from federation.xmatrix import parse_authorization, request_json
from homeserver.clock import Clock
from homeserver.config import FederationConfig
from homeserver.tls import generate_self_signed_certificate, server_context_factory
from tests.harness import ensure_deferred

ORIGIN = "origin.test"


class RecordingResource(resource.Resource):
    """Answers by path; remembers every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.well_known: dict[str, Any] = {}
        self.pending: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        assert request.path is not None and request.uri is not None
        path = request.path.decode()
        body = request.content.read() if request.content is not None else b""
        self.requests.append(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "path": path,
                "args": {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
                "host": request.getHeader("host"),
                "authorization": request.getHeader("authorization"),
                "content_type": request.getHeader("content-type"),
                "body": body,
            }
        )
        if path == "/.well-known/matrix/server":
            if "redirect" in self.well_known:
                request.redirect(self.well_known["redirect"].encode())
                return b""
            for name, value in self.well_known.get("headers", {}).items():
                request.setHeader(name, value)
            return json.dumps(self.well_known.get("body", {})).encode()
        if path == "/moved-well-known":
            return json.dumps(self.well_known.get("body", {})).encode()
        if path == "/notfound":
            request.setResponseCode(404)
            return b'{"errcode":"M_NOT_FOUND","error":"no such thing"}'
        if path == "/error-garbage":
            request.setResponseCode(502)
            return b"<html>bad gateway</html>"
        if path == "/garbage":
            return b"this is not json"
        if path == "/big":
            return json.dumps({"pad": "x" * 20000}).encode()
        if path == "/big-chunked":
            request.write(b'{"pad": "')
            for _ in range(20):
                request.write(b"x" * 1000)
            request.write(b'"}')
            request.finish()
            return server.NOT_DONE_YET
        if path == "/slow":
            self.pending.append(request)
            return server.NOT_DONE_YET
        return json.dumps(
            {"method": request.method.decode(), "body": json.loads(body) if body else None}
        ).encode()


class FederationClientTestCase(unittest.TestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.cert = directory / "tls.crt"
        self.key = directory / "tls.key"
        generate_self_signed_certificate(self.cert, self.key, "127.0.0.1")
        self.resource = RecordingResource()
        site = server.Site(self.resource)
        site.displayTracebacks = False
        self.port: Any = reactor.listenSSL(  # type: ignore[attr-defined]
            0, site, server_context_factory(self.cert, self.key), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)
        self.port_number = self.port.getHost().port
        self.destination = f"127.0.0.1:{self.port_number}"
        self.signing_key = generate_signing_key("t1")
        self.clients: list[FederationClient] = []
        self.addCleanup(self._close)

    def _close(self) -> defer.Deferred[Any]:
        for request in self.resource.pending:
            if not request.finished and not request._disconnected:
                request.finish()

        async def close() -> None:
            for client in self.clients:
                await client.close()
            # Let both ends of closed connections go away before trial checks the reactor.
            await task.deferLater(reactor, 0.05, lambda: None)

        return defer.ensureDeferred(close())

    def make_client(
        self,
        *,
        resolver: ServerResolver | None = None,
        server_name: str = ORIGIN,
        **config: Any,
    ) -> FederationClient:
        settings: dict[str, Any] = {
            "verify_tls": False,
            "ip_range_allowlist": ["127.0.0.0/8", "::1/128"],
        }
        settings.update(config)
        federation_config = FederationConfig(**settings)
        if resolver is None:
            resolver = ServerResolver(
                Clock(reactor), fetch_well_known=_no_well_known, lookup_srv=_no_srv
            )
        client = FederationClient(
            reactor, Clock(reactor), server_name, self.signing_key, federation_config, resolver
        )
        self.clients.append(client)
        return client

    def assert_signed(self, recorded: dict[str, Any], destination: str) -> None:
        header = recorded["authorization"]
        self.assertIsNotNone(header)
        auth = parse_authorization(header)
        self.assertEqual(auth.origin, ORIGIN)
        self.assertEqual(auth.destination, destination)
        self.assertEqual(auth.key_id, "ed25519:t1")
        content = json.loads(recorded["body"]) if recorded["body"] else None
        signed = request_json(recorded["method"], recorded["uri"], ORIGIN, destination, content)
        signed["signatures"] = {ORIGIN: {auth.key_id: auth.signature}}
        verify_signed_json(signed, ORIGIN, get_verify_key(self.signing_key))


async def _no_well_known(host: str) -> Any:
    raise AssertionError(f"unexpected well-known fetch for {host}")


async def _no_srv(name: str) -> list[SrvRecord]:
    return []


class RequestTests(FederationClientTestCase):
    @ensure_deferred
    async def test_get_json_is_signed_with_x_matrix(self) -> None:
        client = self.make_client()
        result = await client.get_json(
            self.destination,
            "/_matrix/federation/v1/version",
            {"a": ["x y", "z/é"], "b": ["1"]},
        )
        self.assertEqual(result, {"method": "GET", "body": None})
        [recorded] = self.resource.requests
        self.assertEqual(recorded["path"], "/_matrix/federation/v1/version")
        self.assertEqual(recorded["args"], {"a": ["x y", "z/é"], "b": ["1"]})
        self.assertEqual(recorded["host"], self.destination)
        self.assert_signed(recorded, self.destination)

    @ensure_deferred
    async def test_put_and_post_send_json_bodies(self) -> None:
        client = self.make_client()
        data = {"pdus": [], "text": "é\u2028", "n": 3}
        put = await client.put_json(self.destination, "/_matrix/federation/v1/send/1", data)
        post = await client.post_json(
            self.destination, "/_matrix/federation/v1/user/keys/query", {"q": 1}, args={"x": ["y"]}
        )
        self.assertEqual(put, {"method": "PUT", "body": data})
        self.assertEqual(post, {"method": "POST", "body": {"q": 1}})
        put_req, post_req = self.resource.requests
        self.assertEqual(put_req["content_type"], "application/json")
        self.assert_signed(put_req, self.destination)
        self.assert_signed(post_req, self.destination)
        self.assertEqual(post_req["uri"], "/_matrix/federation/v1/user/keys/query?x=y")

    @ensure_deferred
    async def test_unsigned_request_has_no_authorization(self) -> None:
        client = self.make_client()
        await client.get_json(self.destination, "/_matrix/key/v2/server", signed=False)
        self.assertIsNone(self.resource.requests[0]["authorization"])

    @ensure_deferred
    async def test_connections_are_reused(self) -> None:
        client = self.make_client()
        for _ in range(3):
            await client.get_json(self.destination, "/x")
        # One idle TLS connection, kept for the next request.
        self.assertEqual(len(client._pool._connections), 1)

    @ensure_deferred
    async def test_hostname_resolved_to_loopback(self) -> None:
        # localhost may resolve to ::1 first, where nobody listens: 127.0.0.1 is tried next.
        client = self.make_client()
        destination = f"localhost:{self.port_number}"
        await client.get_json(destination, "/x")
        self.assertEqual(self.resource.requests[0]["host"], destination)
        self.assert_signed(self.resource.requests[0], destination)


class ErrorTests(FederationClientTestCase):
    @ensure_deferred
    async def test_404_json_is_http_response_error(self) -> None:
        client = self.make_client()
        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(self.destination, "/notfound")
        self.assertEqual(cm.exception.code, 404)
        self.assertEqual(cm.exception.errcode, "M_NOT_FOUND")
        self.assertEqual(cm.exception.error, "no such thing")

    @ensure_deferred
    async def test_non_json_error_body_is_http_response_error_without_body(self) -> None:
        client = self.make_client()
        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(self.destination, "/error-garbage")
        self.assertEqual(cm.exception.code, 502)
        self.assertIsNone(cm.exception.body)

    @ensure_deferred
    async def test_garbage_2xx_body_is_request_send_failed(self) -> None:
        client = self.make_client()
        with self.assertRaises(RequestSendFailed):
            await client.get_json(self.destination, "/garbage")

    @ensure_deferred
    async def test_slow_server_times_out(self) -> None:
        client = self.make_client()
        with self.assertRaises(RequestSendFailed) as cm:
            await client.get_json(self.destination, "/slow", timeout_ms=300)
        self.assertIn("timed out", cm.exception.reason)
        self.assertTrue(cm.exception.can_retry)

    @ensure_deferred
    async def test_oversized_body_is_refused(self) -> None:
        client = self.make_client()
        with self.assertRaises(RequestSendFailed):
            await client.get_json(self.destination, "/big", max_response_bytes=4096)
        with self.assertRaises(RequestSendFailed):
            await client.get_json(self.destination, "/big-chunked", max_response_bytes=4096)
        # The default limit comes from the config.
        client = self.make_client(max_response_bytes=4096)
        with self.assertRaises(RequestSendFailed):
            await client.get_json(self.destination, "/big")
        # And the same client still works for small answers.
        self.assertEqual((await client.get_json(self.destination, "/x"))["method"], "GET")

    @ensure_deferred
    async def test_blocked_ip_is_not_contacted(self) -> None:
        client = self.make_client(ip_range_allowlist=[])
        with self.assertRaises(RequestSendFailed) as cm:
            await client.get_json(self.destination, "/x")
        self.assertFalse(cm.exception.can_retry)
        self.assertEqual(self.resource.requests, [])

    @ensure_deferred
    async def test_blocked_hostname_is_not_contacted(self) -> None:
        client = self.make_client(ip_range_allowlist=[])
        with self.assertRaises(RequestSendFailed) as cm:
            await client.get_json(f"localhost:{self.port_number}", "/x")
        self.assertFalse(cm.exception.can_retry)
        self.assertEqual(self.resource.requests, [])

    @ensure_deferred
    async def test_self_signed_certificate_is_refused_when_verifying(self) -> None:
        client = self.make_client(verify_tls=True)
        with self.assertRaises(RequestSendFailed):
            await client.get_json(self.destination, "/x")
        self.assertEqual(self.resource.requests, [])

    @ensure_deferred
    async def test_exempt_destination_is_not_verified(self) -> None:
        client = self.make_client(
            verify_tls=True, verify_tls_exempt_destinations=[self.destination]
        )
        self.assertEqual((await client.get_json(self.destination, "/x"))["method"], "GET")

    @ensure_deferred
    async def test_connection_refused_is_retryable(self) -> None:
        client = self.make_client()
        self.port.stopListening()
        with self.assertRaises(RequestSendFailed) as cm:
            await client.get_json(self.destination, "/x")
        self.assertTrue(cm.exception.can_retry)

    @ensure_deferred
    async def test_federation_disabled(self) -> None:
        client = self.make_client(enabled=False)
        with self.assertRaises(RequestSendFailed) as cm:
            await client.get_json(self.destination, "/x")
        self.assertFalse(cm.exception.can_retry)
        self.assertIn("federation disabled", cm.exception.reason)

    @ensure_deferred
    async def test_requests_to_ourselves_are_refused(self) -> None:
        client = self.make_client(server_name=self.destination)
        with self.assertRaises(ValueError):
            await client.get_json(self.destination, "/x")

    @ensure_deferred
    async def test_invalid_destination_is_not_retryable(self) -> None:
        client = self.make_client()
        with self.assertRaises(RequestSendFailed) as cm:
            await client.get_json("bad name", "/x")
        self.assertFalse(cm.exception.can_retry)


class BuildPathTests(unittest.TestCase):
    def test_parts_are_percent_encoded(self) -> None:
        self.assertEqual(
            build_path("/_matrix/federation/v1/state/%s", "!room/x:example.org"),
            "/_matrix/federation/v1/state/%21room%2Fx%3Aexample.org",
        )
        self.assertEqual(
            build_path("/_matrix/federation/v1/make_join/%s/%s", "!r:s", "@u ?:s"),
            "/_matrix/federation/v1/make_join/%21r%3As/%40u%20%3F%3As",
        )


class WellKnownFetchTests(FederationClientTestCase):
    """The real HTTPS well-known fetch, pointed at the local server's port."""

    def make_resolver(self, **config: Any) -> ServerResolver:
        settings: dict[str, Any] = {"verify_tls": False, "ip_range_allowlist": ["127.0.0.0/8"]}
        settings.update(config)
        federation_config = FederationConfig(**settings)
        connector = TlsConnector(
            reactor,
            IPRangeFilter(
                federation_config.ip_range_blocklist, federation_config.ip_range_allowlist
            ),
        )
        fetcher = HttpsWellKnownFetcher(
            reactor, federation_config, connector, port=self.port_number
        )
        return ServerResolver(
            Clock(reactor), fetch_well_known=fetcher, lookup_srv=_no_srv, rng=random.Random(1)
        )

    @ensure_deferred
    async def test_end_to_end_through_well_known_delegation(self) -> None:
        self.resource.well_known = {"body": {"m.server": self.destination}}
        client = self.make_client(resolver=self.make_resolver())
        await client.get_json("localhost", "/x")
        wk, request = self.resource.requests
        self.assertEqual(wk["path"], "/.well-known/matrix/server")
        self.assertEqual(wk["host"], f"localhost:{self.port_number}")
        self.assertIsNone(wk["authorization"])
        self.assertEqual(request["host"], self.destination)
        self.assert_signed(request, "localhost")

    @ensure_deferred
    async def test_redirects_are_followed(self) -> None:
        self.resource.well_known = {
            "redirect": f"https://127.0.0.1:{self.port_number}/moved-well-known",
            "body": {"m.server": "delegated.test:1234"},
        }
        targets = await self.make_resolver().resolve("localhost")
        self.assertEqual((targets[0].host_to_connect, targets[0].port), ("delegated.test", 1234))
        self.assertEqual(
            [r["path"] for r in self.resource.requests],
            ["/.well-known/matrix/server", "/moved-well-known"],
        )

    @ensure_deferred
    async def test_redirect_loops_end(self) -> None:
        self.resource.well_known = {
            "redirect": f"https://127.0.0.1:{self.port_number}/.well-known/matrix/server"
        }
        targets = await self.make_resolver().resolve("localhost")
        self.assertEqual((targets[0].host_to_connect, targets[0].port), ("localhost", 8448))
        self.assertLessEqual(len(self.resource.requests), 6)

    @ensure_deferred
    async def test_unverifiable_certificate_means_no_delegation(self) -> None:
        self.resource.well_known = {"body": {"m.server": "delegated.test:1234"}}
        targets = await self.make_resolver(verify_tls=True).resolve("localhost")
        self.assertEqual((targets[0].host_to_connect, targets[0].port), ("localhost", 8448))
        self.assertEqual(self.resource.requests, [])

    @ensure_deferred
    async def test_blocked_well_known_host_is_not_contacted(self) -> None:
        self.resource.well_known = {"body": {"m.server": "delegated.test:1234"}}
        targets = await self.make_resolver(ip_range_allowlist=[]).resolve("localhost")
        self.assertEqual(targets[0].port, 8448)
        self.assertEqual(self.resource.requests, [])


class CertificateTests(unittest.TestCase):
    def test_generated_certificate_names_the_host(self) -> None:
        from cryptography import x509

        directory = Path(self.mktemp())
        for name, expected in (
            ("example.org:8448", x509.DNSName("example.org")),
            ("[::1]:8448", x509.IPAddress(__import__("ipaddress").ip_address("::1"))),
            ("10.0.0.1", x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.1"))),
        ):
            cert_path = directory / "c.pem"
            key_path = directory / "k.pem"
            generate_self_signed_certificate(cert_path, key_path, name)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.assertEqual(list(san), [expected])
            self.assertEqual(key_path.stat().st_mode & 0o777, 0o600)
            days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
            self.assertGreaterEqual(days, 3650)
            server_context_factory(cert_path, key_path)  # loads as a listener's TLS
