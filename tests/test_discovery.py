"""Server name resolution (spec: "Resolving server names"), with fake DNS and a fake
well-known fetch, on a fake clock."""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from federation.discovery import (
    IPRangeFilter,
    ServerResolver,
    SrvRecord,
    Target,
    WellKnownResponse,
    order_srv_records,
    split_server_name,
)
from homeserver.clock import Clock
from tests.harness import ensure_deferred


class FakeWellKnown:
    """Answers per host: a WellKnownResponse, an Exception to raise, or None (404)."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.fetched: list[str] = []
        self.gate: defer.Deferred[None] | None = None

    def delegate(self, host: str, server: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"m.server": server}).encode()
        self.answers[host] = WellKnownResponse(200, body, headers or {})

    async def __call__(self, host: str) -> WellKnownResponse:
        self.fetched.append(host)
        if self.gate is not None:
            await self.gate
        answer = self.answers.get(host)
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            return WellKnownResponse(404, b'{"errcode":"M_NOT_FOUND"}', {})
        assert isinstance(answer, WellKnownResponse)
        return answer


class FakeDns:
    def __init__(self) -> None:
        self.records: dict[str, list[SrvRecord]] = {}
        self.looked_up: list[str] = []

    async def __call__(self, name: str) -> list[SrvRecord]:
        self.looked_up.append(name)
        return list(self.records.get(name, []))


class ResolverTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.well_known = FakeWellKnown()
        self.dns = FakeDns()
        self.resolver = ServerResolver(
            Clock(self.clock),
            fetch_well_known=self.well_known,
            lookup_srv=self.dns,
            rng=random.Random(4),
        )

    async def resolve(self, name: str) -> list[Target]:
        return await self.resolver.resolve(name)


class IpLiteralTests(ResolverTestCase):
    @ensure_deferred
    async def test_ipv4_literal_defaults_to_8448(self) -> None:
        self.assertEqual(
            await self.resolve("1.2.3.4"), [Target("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")]
        )
        self.assertEqual(self.well_known.fetched, [])
        self.assertEqual(self.dns.looked_up, [])

    @ensure_deferred
    async def test_ipv4_literal_with_port_keeps_port_in_host_header(self) -> None:
        self.assertEqual(
            await self.resolve("1.2.3.4:9000"),
            [Target("1.2.3.4", 9000, "1.2.3.4:9000", "1.2.3.4")],
        )

    @ensure_deferred
    async def test_ipv6_literal(self) -> None:
        self.assertEqual(
            await self.resolve("[2001:db8::1]"),
            [Target("2001:db8::1", 8448, "[2001:db8::1]", "2001:db8::1")],
        )
        self.assertEqual(
            await self.resolve("[2001:db8::1]:8449"),
            [Target("2001:db8::1", 8449, "[2001:db8::1]:8449", "2001:db8::1")],
        )
        self.assertEqual(self.well_known.fetched, [])


class ExplicitPortTests(ResolverTestCase):
    @ensure_deferred
    async def test_hostname_with_port_skips_well_known_and_srv(self) -> None:
        self.well_known.delegate("example.org", "elsewhere.org")
        self.dns.records["_matrix-fed._tcp.example.org"] = [SrvRecord(0, 0, 1, "srv.org")]
        self.assertEqual(
            await self.resolve("example.org:8000"),
            [Target("example.org", 8000, "example.org:8000", "example.org")],
        )
        self.assertEqual(self.well_known.fetched, [])
        self.assertEqual(self.dns.looked_up, [])


class WellKnownDelegationTests(ResolverTestCase):
    @ensure_deferred
    async def test_delegation_with_port(self) -> None:
        self.well_known.delegate("example.org", "matrix.example.org:443")
        self.assertEqual(
            await self.resolve("example.org"),
            [Target("matrix.example.org", 443, "matrix.example.org:443", "matrix.example.org")],
        )
        self.assertEqual(self.dns.looked_up, [])

    @ensure_deferred
    async def test_delegation_to_ip_literal(self) -> None:
        self.well_known.delegate("example.org", "10.1.2.3")
        self.assertEqual(
            await self.resolve("example.org"), [Target("10.1.2.3", 8448, "10.1.2.3", "10.1.2.3")]
        )
        self.well_known.delegate("v6.org", "[2001:db8::2]:8500")
        self.assertEqual(
            await self.resolve("v6.org"),
            [Target("2001:db8::2", 8500, "[2001:db8::2]:8500", "2001:db8::2")],
        )
        self.assertEqual(self.dns.looked_up, [])

    @ensure_deferred
    async def test_delegation_without_port_uses_srv_of_delegated_name(self) -> None:
        self.well_known.delegate("example.org", "matrix.example.org")
        self.dns.records["_matrix-fed._tcp.matrix.example.org"] = [
            SrvRecord(10, 0, 8500, "fed1.example.net.")
        ]
        # The original name's SRV record is not used once well-known delegated.
        self.dns.records["_matrix-fed._tcp.example.org"] = [SrvRecord(0, 0, 1, "wrong.org")]
        self.assertEqual(
            await self.resolve("example.org"),
            [Target("fed1.example.net", 8500, "matrix.example.org", "matrix.example.org")],
        )

    @ensure_deferred
    async def test_delegation_without_port_falls_back_to_deprecated_srv(self) -> None:
        self.well_known.delegate("example.org", "matrix.example.org")
        self.dns.records["_matrix._tcp.matrix.example.org"] = [
            SrvRecord(10, 0, 8600, "old.example.net")
        ]
        self.assertEqual(
            await self.resolve("example.org"),
            [Target("old.example.net", 8600, "matrix.example.org", "matrix.example.org")],
        )
        self.assertEqual(
            self.dns.looked_up,
            ["_matrix-fed._tcp.matrix.example.org", "_matrix._tcp.matrix.example.org"],
        )

    @ensure_deferred
    async def test_delegation_without_port_or_srv_uses_8448(self) -> None:
        self.well_known.delegate("example.org", "matrix.example.org")
        self.assertEqual(
            await self.resolve("example.org"),
            [Target("matrix.example.org", 8448, "matrix.example.org", "matrix.example.org")],
        )


class SrvTests(ResolverTestCase):
    @ensure_deferred
    async def test_matrix_fed_srv_of_server_name(self) -> None:
        self.dns.records["_matrix-fed._tcp.example.org"] = [
            SrvRecord(20, 0, 8002, "b.example.org"),
            SrvRecord(10, 0, 8001, "a.example.org."),
        ]
        self.dns.records["_matrix._tcp.example.org"] = [SrvRecord(0, 0, 1, "old.org")]
        self.assertEqual(
            await self.resolve("example.org"),
            [
                Target("a.example.org", 8001, "example.org", "example.org"),
                Target("b.example.org", 8002, "example.org", "example.org"),
            ],
        )
        self.assertEqual(self.well_known.fetched, ["example.org"])
        self.assertEqual(self.dns.looked_up, ["_matrix-fed._tcp.example.org"])

    @ensure_deferred
    async def test_deprecated_matrix_srv_when_no_matrix_fed(self) -> None:
        self.dns.records["_matrix._tcp.example.org"] = [SrvRecord(0, 0, 8123, "old.example.org")]
        self.assertEqual(
            await self.resolve("example.org"),
            [Target("old.example.org", 8123, "example.org", "example.org")],
        )

    @ensure_deferred
    async def test_no_srv_means_port_8448(self) -> None:
        self.assertEqual(
            await self.resolve("Example.ORG"),
            [Target("example.org", 8448, "example.org", "example.org")],
        )

    @ensure_deferred
    async def test_srv_target_dot_means_no_service_here(self) -> None:
        self.dns.records["_matrix-fed._tcp.example.org"] = [SrvRecord(0, 0, 0, ".")]
        self.assertEqual(
            await self.resolve("example.org"),
            [Target("example.org", 8448, "example.org", "example.org")],
        )

    def test_srv_order_is_priority_then_weighted(self) -> None:
        records = [
            SrvRecord(5, 0, 1, "late"),
            SrvRecord(1, 100, 2, "heavy"),
            SrvRecord(1, 0, 3, "zero"),
            SrvRecord(1, 1, 4, "light"),
        ]
        heavy_first = 0
        for seed in range(200):
            ordered = order_srv_records(records, random.Random(seed))
            self.assertEqual(ordered[-1].target, "late")
            # A zero weight goes after every weighted record of its priority.
            self.assertEqual(ordered[2].target, "zero")
            heavy_first += ordered[0].target == "heavy"
        self.assertGreater(heavy_first, 180)


class WellKnownCacheTests(ResolverTestCase):
    @ensure_deferred
    async def test_second_resolve_uses_the_cache(self) -> None:
        self.well_known.delegate("example.org", "m.example.org:443")
        first = await self.resolve("example.org")
        second = await self.resolve("example.org")
        self.assertEqual(first, second)
        self.assertEqual(self.well_known.fetched, ["example.org"])

    @ensure_deferred
    async def test_default_cache_is_a_day(self) -> None:
        self.well_known.delegate("example.org", "m.example.org:443")
        await self.resolve("example.org")
        self.clock.advance(24 * 3600 - 10)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 1)
        self.clock.advance(20)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 2)

    @ensure_deferred
    async def test_cache_control_max_age_is_respected(self) -> None:
        self.well_known.delegate(
            "example.org", "m.example.org:443", {"cache-control": "public, max-age=600"}
        )
        await self.resolve("example.org")
        self.clock.advance(599)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 1)
        self.clock.advance(2)
        self.well_known.delegate("example.org", "new.example.org:443")
        self.assertEqual((await self.resolve("example.org"))[0].host_to_connect, "new.example.org")
        self.assertEqual(len(self.well_known.fetched), 2)

    @ensure_deferred
    async def test_cache_time_is_capped_at_48_hours(self) -> None:
        self.well_known.delegate(
            "example.org", "m.example.org:443", {"cache-control": "max-age=31536000"}
        )
        await self.resolve("example.org")
        self.clock.advance(48 * 3600 + 1)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 2)

    @ensure_deferred
    async def test_expires_header_is_respected(self) -> None:
        self.clock.advance(1_700_000_000)
        self.well_known.delegate(
            "example.org",
            "m.example.org:443",
            {"expires": "Tue, 14 Nov 2023 23:13:20 GMT"},  # 1_700_003_600: an hour ahead
        )
        await self.resolve("example.org")
        self.clock.advance(3590)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 1)
        self.clock.advance(20)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 2)

    @ensure_deferred
    async def test_missing_well_known_is_cached_for_an_hour(self) -> None:
        await self.resolve("example.org")
        self.clock.advance(3500)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 1)
        self.clock.advance(200)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 2)

    @ensure_deferred
    async def test_fetch_failures_back_off_exponentially(self) -> None:
        self.well_known.answers["example.org"] = ConnectionRefusedError("nobody home")
        self.assertEqual((await self.resolve("example.org"))[0].port, 8448)
        self.clock.advance(5 * 60 + 1)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 2)
        # Second failure in a row: ten minutes.
        self.clock.advance(5 * 60 + 1)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 2)
        self.clock.advance(5 * 60)
        await self.resolve("example.org")
        self.assertEqual(len(self.well_known.fetched), 3)

    @ensure_deferred
    async def test_transient_failure_keeps_the_last_delegation(self) -> None:
        self.well_known.delegate("example.org", "m.example.org:443")
        await self.resolve("example.org")
        self.clock.advance(24 * 3600 + 1)
        self.well_known.answers["example.org"] = TimeoutError("slow")
        targets = await self.resolve("example.org")
        self.assertEqual(targets[0].host_to_connect, "m.example.org")

    @ensure_deferred
    async def test_concurrent_resolves_share_one_fetch(self) -> None:
        self.well_known.delegate("example.org", "m.example.org:443")
        self.well_known.gate = defer.Deferred()
        first = defer.ensureDeferred(self.resolve("example.org"))
        second = defer.ensureDeferred(self.resolve("example.org"))
        self.assertEqual(self.well_known.fetched, ["example.org"])
        self.well_known.gate.callback(None)
        self.assertEqual(await first, await second)
        self.assertEqual(self.well_known.fetched, ["example.org"])


class InvalidWellKnownTests(ResolverTestCase):
    async def assert_ignored(self, response: WellKnownResponse) -> None:
        self.well_known.answers["example.org"] = response
        self.dns.records["_matrix-fed._tcp.example.org"] = [SrvRecord(0, 0, 8765, "srv.org")]
        self.assertEqual(
            await self.resolve("example.org"),
            [Target("srv.org", 8765, "example.org", "example.org")],
        )

    @ensure_deferred
    async def test_bad_json_is_ignored(self) -> None:
        await self.assert_ignored(WellKnownResponse(200, b"{not json", {}))

    @ensure_deferred
    async def test_missing_m_server_is_ignored(self) -> None:
        await self.assert_ignored(WellKnownResponse(200, b'{"m.homeserver": "x"}', {}))

    @ensure_deferred
    async def test_non_object_and_bad_server_names_are_ignored(self) -> None:
        await self.assert_ignored(WellKnownResponse(200, b'["m.server"]', {}))
        self.clock.advance(3601)
        await self.assert_ignored(WellKnownResponse(200, b'{"m.server": "bad name:x"}', {}))
        self.clock.advance(3601)
        await self.assert_ignored(WellKnownResponse(200, b'{"m.server": 42}', {}))

    @ensure_deferred
    async def test_non_200_is_ignored(self) -> None:
        body = json.dumps({"m.server": "m.example.org:443"}).encode()
        await self.assert_ignored(WellKnownResponse(500, body, {}))


class ServerNameTests(unittest.TestCase):
    def test_split_server_name(self) -> None:
        self.assertEqual(split_server_name("Example.org"), ("example.org", None))
        self.assertEqual(split_server_name("example.org:80"), ("example.org", 80))
        self.assertEqual(split_server_name("[::1]:80"), ("::1", 80))
        self.assertEqual(split_server_name("1.2.3.4"), ("1.2.3.4", None))
        for bad in ("", "a b", "example.org:0", "[::1", "example.org:99999"):
            with self.assertRaises(ValueError):
                split_server_name(bad)

    @ensure_deferred
    async def test_invalid_server_name_is_a_value_error(self) -> None:
        resolver = ServerResolver(Clock(task.Clock()), fetch_well_known=FakeWellKnown())
        with self.assertRaises(ValueError):
            await resolver.resolve("not a server")


class IPRangeFilterTests(unittest.TestCase):
    def test_blocklist_and_allowlist(self) -> None:
        f = IPRangeFilter(["127.0.0.0/8", "10.0.0.0/8", "::1/128", "fc00::/7"], ["10.1.0.0/16"])
        self.assertFalse(f.allows("127.0.0.1"))
        self.assertFalse(f.allows("::1"))
        self.assertFalse(f.allows("fd00::5"))
        self.assertFalse(f.allows("10.2.0.1"))
        self.assertTrue(f.allows("10.1.2.3"))
        self.assertTrue(f.allows("8.8.8.8"))
        self.assertTrue(f.allows("2001:db8::1"))

    def test_ipv4_mapped_ipv6_is_checked_as_ipv4(self) -> None:
        f = IPRangeFilter(["127.0.0.0/8"], [])
        self.assertFalse(f.allows("::ffff:127.0.0.1"))
        self.assertTrue(f.allows("::ffff:8.8.8.8"))

    def test_unspecified_and_multicast_are_always_refused(self) -> None:
        f = IPRangeFilter([], ["0.0.0.0/0"])
        self.assertFalse(f.allows("0.0.0.0"))
        self.assertFalse(f.allows("::"))
        self.assertFalse(f.allows("224.0.0.1"))
