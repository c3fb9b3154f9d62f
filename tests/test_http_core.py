"""HTTP core: routing errors, CORS, JSON parsing, body limits, discovery endpoints, access tokens.

Everything here goes over real HTTP to a server on loopback, on both database engines.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer, reactor
from twisted.web.client import Agent, ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.harness import SERVER_NAME, HomeserverTestCase, Response, on_both_engines

CORS_REQUIRED_METHODS = {"GET", "POST", "PUT", "DELETE", "OPTIONS"}
CORS_REQUIRED_HEADERS = {"x-requested-with", "content-type", "authorization"}


@implementer(IBodyProducer)
class ChunkedProducer:
    """A body of unknown length, so the Agent sends it with `Transfer-Encoding: chunked`."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        for chunk in self._chunks:
            consumer.write(chunk)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _comma_set(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


class CorsAssertions:
    def assertCors(self, response: Response) -> None:
        assert response.header("Access-Control-Allow-Origin") == "*", response.headers
        methods = _comma_set(response.header("Access-Control-Allow-Methods"))
        assert CORS_REQUIRED_METHODS <= methods, methods
        headers = {h.lower() for h in _comma_set(response.header("Access-Control-Allow-Headers"))}
        assert CORS_REQUIRED_HEADERS <= headers, headers


@on_both_engines
class RoutingTests(HomeserverTestCase, CorsAssertions):
    async def test_unknown_client_endpoint_is_404_unrecognized(self):
        r = await self.request("GET", "/_matrix/client/v3/no/such/endpoint")
        self.assertError(r, 404, "M_UNRECOGNIZED")
        self.assertEqual(r.header("Content-Type"), "application/json")

    async def test_unknown_path_outside_matrix_is_404_unrecognized(self):
        r = await self.request("GET", "/definitely/not/here")
        self.assertError(r, 404, "M_UNRECOGNIZED")

    async def test_unknown_version_prefix_is_404(self):
        r = await self.request("GET", "/_matrix/client/v9/login")
        self.assertError(r, 404, "M_UNRECOGNIZED")

    async def test_wrong_method_on_known_path_is_405_unrecognized(self):
        # /register is POST only, /login is GET and POST, /versions is GET only.
        r = await self.request("GET", "/_matrix/client/v3/register")
        self.assertError(r, 405, "M_UNRECOGNIZED")
        r = await self.request("PUT", "/_matrix/client/v3/login", {})
        self.assertError(r, 405, "M_UNRECOGNIZED")
        self.assertEqual(r.header("Allow"), "GET, OPTIONS, POST")
        r = await self.request("DELETE", "/_matrix/client/versions")
        self.assertError(r, 405, "M_UNRECOGNIZED")
        self.assertEqual(r.header("Allow"), "GET, OPTIONS")

    async def test_unknown_method_on_known_path_is_405(self):
        r = await self.request("PATCH", "/_matrix/client/v3/login", {})
        self.assertError(r, 405, "M_UNRECOGNIZED")

    async def test_r0_prefix_is_still_served(self):
        r = await self.request("GET", "/_matrix/client/r0/login")
        self.assertEqual(r.code, 200, r)
        self.assertIn("flows", r.json)

    async def test_head_on_get_endpoint(self):
        r = await self.request("HEAD", "/_matrix/client/versions")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.body, b"")

    async def test_responses_are_not_cached(self):
        r = await self.request("GET", "/_matrix/client/versions")
        self.assertIn("no-store", r.header("Cache-Control") or "")


@on_both_engines
class CorsTests(HomeserverTestCase, CorsAssertions):
    async def test_options_preflight_on_client_endpoint(self):
        r = await self.request(
            "OPTIONS",
            "/_matrix/client/v3/login",
            headers={
                "Origin": "https://app.example.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        self.assertEqual(r.code, 200, r)
        self.assertCors(r)

    async def test_options_does_not_run_endpoint_logic(self):
        # OPTIONS on an authenticated, state-changing endpoint: no token, no body, no logout.
        r = await self.request("OPTIONS", "/_matrix/client/v3/logout")
        self.assertEqual(r.code, 200, r)
        self.assertCors(r)
        r = await self.request("OPTIONS", "/_matrix/client/v3/register")
        self.assertEqual(r.code, 200, r)
        self.assertCors(r)

    async def test_options_on_path_with_parameters(self):
        r = await self.request("OPTIONS", "/_matrix/client/v3/devices/ABCDEF")
        self.assertEqual(r.code, 200, r)
        self.assertCors(r)

    async def test_cors_on_normal_responses(self):
        r = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(r.code, 200)
        self.assertCors(r)
        r = await self.request("GET", "/_matrix/client/v3/login")
        self.assertEqual(r.code, 200)
        self.assertCors(r)

    async def test_cors_on_error_responses(self):
        r = await self.request("GET", "/_matrix/client/v3/account/whoami")
        self.assertError(r, 401, "M_MISSING_TOKEN")
        self.assertCors(r)
        r = await self.request("GET", "/_matrix/client/v3/nope")
        self.assertError(r, 404, "M_UNRECOGNIZED")
        self.assertCors(r)

    async def test_cors_on_well_known(self):
        r = await self.request("GET", "/.well-known/matrix/client")
        self.assertEqual(r.code, 200)
        self.assertCors(r)

    async def test_retry_after_is_exposed(self):
        r = await self.request("GET", "/_matrix/client/versions")
        exposed = {h.lower() for h in _comma_set(r.header("Access-Control-Expose-Headers"))}
        self.assertIn("retry-after", exposed)


@on_both_engines
class JsonBodyTests(HomeserverTestCase):
    async def test_malformed_json_is_not_json(self):
        for raw in (b'{"type": "m.login.password",', b"{not json}", b"\xff\xfe{}", b"{'a': 1}"):
            r = await self.request("POST", "/_matrix/client/v3/login", raw=raw)
            self.assertError(r, 400, "M_NOT_JSON")

    async def test_nan_and_infinity_are_not_json(self):
        for raw in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'):
            r = await self.request("POST", "/_matrix/client/v3/login", raw=raw)
            self.assertError(r, 400, "M_NOT_JSON")

    async def test_json_that_is_not_an_object_is_bad_json(self):
        for raw in (b"[]", b'["type"]', b'"m.login.password"', b"42", b"null", b"true"):
            r = await self.request("POST", "/_matrix/client/v3/login", raw=raw)
            self.assertError(r, 400, "M_BAD_JSON")

    async def test_deeply_nested_json_is_rejected_cleanly(self):
        raw = b"[" * 100_000 + b"]" * 100_000
        r = await self.request("POST", "/_matrix/client/v3/login", raw=raw)
        # Valid JSON in theory, but past any sane parser's depth: refused as not JSON (not a
        # 500 from a RecursionError).
        self.assertError(r, 400, "M_NOT_JSON")

    async def test_responses_are_json_objects(self):
        r = await self.request("GET", "/_matrix/client/v3/login")
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertIsInstance(r.json, dict)


@on_both_engines
class BodyLimitTests(HomeserverTestCase):
    config_overrides = {"limits": {"max_request_body_bytes": 2048}}

    def _padded_login(self, size: int) -> bytes:
        prefix = b'{"type": "m.login.password", "padding": "'
        suffix = b'"}'
        return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix

    async def _chunked(self, path: str, chunks: list[bytes]) -> Response:
        headers = Headers(
            {b"User-Agent": [b"heddle-tests"], b"Content-Type": [b"application/json"]}
        )
        agent = Agent(reactor)
        response = await agent.request(
            b"POST", (self.base_url + path).encode(), headers, ChunkedProducer(chunks)
        )
        return Response(response.code, response.headers, await readBody(response))

    async def test_body_at_the_limit_is_accepted(self):
        body = self._padded_login(2048)
        self.assertEqual(len(body), 2048)
        r = await self.request("POST", "/_matrix/client/v3/login", raw=body)
        # Parsed and handled (no identifier): not refused for its size.
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_body_over_the_limit_is_413(self):
        r = await self.request("POST", "/_matrix/client/v3/login", raw=self._padded_login(2049))
        self.assertError(r, 413, "M_TOO_LARGE")
        r = await self.request("POST", "/_matrix/client/v3/register", raw=self._padded_login(5000))
        self.assertError(r, 413, "M_TOO_LARGE")

    async def test_chunked_body_over_the_limit_is_413(self):
        body = self._padded_login(6000)
        chunks = [body[i : i + 500] for i in range(0, len(body), 500)]
        r = await self._chunked("/_matrix/client/v3/login", chunks)
        self.assertError(r, 413, "M_TOO_LARGE")

    async def test_chunked_body_under_the_limit_is_accepted(self):
        body = b'{"type": "m.login.password", "user": "nobody", "password": "whatever!"}'
        r = await self._chunked("/_matrix/client/v3/login", [body[:10], body[10:]])
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_body_far_over_the_limit_is_refused_and_server_survives(self):
        # Far beyond the limit the server may hang up instead of reading it all; either way
        # the request must not succeed, and the server must keep serving.
        http_logger = logging.getLogger("client_api.http")
        self.patch(http_logger, "disabled", True)  # the hang-up is logged as a warning
        try:
            r = await self.request(
                "POST", "/_matrix/client/v3/login", raw=self._padded_login(2048 * 20)
            )
        except ResponseFailed:
            pass
        else:
            self.assertError(r, 413, "M_TOO_LARGE")
        r = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(r.code, 200)

    async def test_unknown_endpoint_with_large_body_is_still_404(self):
        r = await self.request("POST", "/_matrix/client/v3/nope", raw=self._padded_login(4000))
        self.assertError(r, 404, "M_UNRECOGNIZED")


@on_both_engines
class DiscoveryTests(HomeserverTestCase):
    async def test_versions(self):
        r = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertIsInstance(body["versions"], list)
        self.assertTrue(body["versions"])
        for version in body["versions"]:
            self.assertRegex(version, r"^(r0\.\d+\.\d+|v1\.\d+)$")
        self.assertIn("v1.1", body["versions"])
        self.assertIsInstance(body.get("unstable_features", {}), dict)

    async def test_client_well_known(self):
        r = await self.request("GET", "/.well-known/matrix/client")
        self.assertEqual(r.code, 200, r)
        base_url = r.json["m.homeserver"]["base_url"]
        self.assertRegex(base_url, r"^https?://[^/]+/?$")

    async def test_client_well_known_uses_public_baseurl(self):
        await self.start_server(public_baseurl="https://matrix.example.org")
        r = await self.request("GET", "/.well-known/matrix/client")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            r.json["m.homeserver"]["base_url"].rstrip("/"), "https://matrix.example.org"
        )

    async def test_login_well_known_matches_client_well_known(self):
        await self.start_server(public_baseurl="https://matrix.example.org/")
        await self.register("alice")
        login = await self.login("alice")
        wk = (await self.request("GET", "/.well-known/matrix/client")).json
        self.assertEqual(login["well_known"]["m.homeserver"], wk["m.homeserver"])

    async def test_server_well_known_404_by_default(self):
        r = await self.request("GET", "/.well-known/matrix/server")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_server_well_known_when_enabled(self):
        await self.start_server(serve_server_wellknown=True)
        r = await self.request("GET", "/.well-known/matrix/server")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"m.server": f"{SERVER_NAME}:8448"})

    async def test_server_well_known_federation_address(self):
        await self.start_server(
            serve_server_wellknown=True, federation_address="fed.example.org:443"
        )
        r = await self.request("GET", "/.well-known/matrix/server")
        self.assertEqual(r.json, {"m.server": "fed.example.org:443"})

    async def test_capabilities_requires_token(self):
        r = await self.request("GET", "/_matrix/client/v3/capabilities")
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("GET", "/_matrix/client/v3/capabilities", token="not-a-token")
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_capabilities(self):
        token = (await self.register("alice"))["access_token"]
        r = await self.request("GET", "/_matrix/client/v3/capabilities", token=token)
        self.assertEqual(r.code, 200, r)
        caps = r.json["capabilities"]
        self.assertIsInstance(caps["m.change_password"]["enabled"], bool)
        self.assertTrue(caps["m.change_password"]["enabled"])
        for name, cap in caps.items():
            self.assertIsInstance(cap, dict, name)


@on_both_engines
class AccessTokenTests(HomeserverTestCase):
    WHOAMI = "/_matrix/client/v3/account/whoami"

    async def test_missing_token(self):
        r = await self.request("GET", self.WHOAMI)
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_non_bearer_authorization_is_missing_token(self):
        r = await self.request("GET", self.WHOAMI, headers={"Authorization": "Basic xyz"})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_empty_bearer_is_missing_token(self):
        r = await self.request("GET", self.WHOAMI, headers={"Authorization": "Bearer "})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_unknown_token(self):
        r = await self.request("GET", self.WHOAMI, token="syt_not_a_real_token")
        body = self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        self.assertFalse(body.get("soft_logout", False))

    async def test_tampered_token_is_unknown(self):
        token = (await self.register("alice"))["access_token"]
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        r = await self.request("GET", self.WHOAMI, token=tampered)
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_bearer_token_works(self):
        reg = await self.register("alice")
        r = await self.request("GET", self.WHOAMI, token=reg["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], f"@alice:{SERVER_NAME}")
        self.assertEqual(r.json["device_id"], reg["device_id"])

    async def test_bearer_scheme_is_case_insensitive(self):
        token = (await self.register("alice"))["access_token"]
        r = await self.request("GET", self.WHOAMI, headers={"Authorization": f"bearer {token}"})
        self.assertEqual(r.code, 200, r)

    async def test_query_parameter_token_works(self):
        token = (await self.register("alice"))["access_token"]
        r = await self.request("GET", f"{self.WHOAMI}?access_token={token}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], f"@alice:{SERVER_NAME}")

    async def test_query_parameter_unknown_token(self):
        r = await self.request("GET", f"{self.WHOAMI}?access_token=nope")
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")


@on_both_engines
class InternalErrorTests(HomeserverTestCase):
    async def test_unexpected_exception_is_500_without_details(self):
        secret = "kaboom-internal-detail-1234"

        def boom() -> Any:
            raise RuntimeError(secret)

        self.hs.login.login_flows = boom  # type: ignore[method-assign]
        with self.assertLogs("client_api.http", level="ERROR") as logs:
            r = await self.request("GET", "/_matrix/client/v3/login")
        # The operator gets the traceback in the log; the client gets nothing of it.
        self.assertIn(secret, "\n".join(logs.output))
        body = self.assertError(r, 500, "M_UNKNOWN")
        self.assertEqual(set(body), {"errcode", "error"})
        self.assertNotIn(secret.encode(), r.body)
        self.assertNotIn(b"Traceback", r.body)
        self.assertNotIn(b"RuntimeError", r.body)
        self.assertNotIn(b".py", r.body)

    async def test_unexpected_exception_in_async_handler(self):
        async def boom(*args: Any, **kwargs: Any) -> Any:
            raise KeyError("secret-key-name")

        self.hs.registration.check_available = boom  # type: ignore[method-assign]
        with self.assertLogs("client_api.http", level="ERROR"):
            r = await self.request("GET", "/_matrix/client/v3/register/available?username=alice")
        self.assertError(r, 500, "M_UNKNOWN")
        self.assertNotIn(b"secret-key-name", r.body)
        self.assertNotIn(b"KeyError", r.body)
        # The server is still healthy afterwards.
        r = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(r.code, 200)

    async def test_health(self):
        r = await self.request("GET", "/health")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.body, b"OK")
