"""In-memory caches: `LruCache` (eviction, time to live, metrics), and the structures kept per
user, room, token or server staying within their bounds, as `/metrics` reports them."""

from __future__ import annotations

import gc
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from signedjson.key import generate_signing_key
from twisted.internet import defer, task
from twisted.trial import unittest

import federation.keys
import homeserver.auth.tokens
import storage.stores.events
from federation.errors import KeyLookupError, RequestSendFailed
from federation.keys import KeyRing
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.config import FederationConfig
from homeserver.sync.notifier import NOTIFICATION_TIMES, Notifier
from tests.harness import SERVER_NAME, HomeserverTestCase, on_both_engines
from tests.room_helpers import RoomTestCase

# Every cache a server builds, by its `cache` label.
SERVER_CACHES = {
    "access_tokens",
    "current_state",
    "decoded_verify_keys",
    "device_last_seen_written",
    "event_state_groups",
    "events",
    "filters",
    "key_fetch_failures",
    "notifier_user_positions",
    "ratelimit_login_failures_per_account",
    "remote_profiles",
    "room_versions",
    "state_group_keys",
    "state_groups",
    "stream_changes_memberships",
    "stream_changes_room_events",
    "sync_to_device_unacknowledged",
    "url_previews",
    "user_memberships",
    "well_known",
}


def sample(name: str, cache: str) -> float:
    """A cache metric's value in this process, 0 if it was never recorded."""
    value = REGISTRY.get_sample_value(name, {"cache": cache})
    return value or 0.0


class LruCacheTests(unittest.TestCase):
    def test_least_recently_used_entry_is_evicted(self) -> None:
        cache: LruCache[str, int] = LruCache("test_lru_order", 2)
        cache.set("a", 1)
        cache.set("b", 2)
        self.assertEqual(cache.get("a"), 1)  # "b" is now the least recently used
        cache.set("c", 3)
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.get("b"))
        self.assertEqual((cache.get("a"), cache.get("c")), (1, 3))

    def test_peek_and_contains_are_not_a_use(self) -> None:
        cache: LruCache[str, int] = LruCache("test_lru_peek", 2)
        cache.set("a", 1)
        cache.set("b", 2)
        self.assertEqual(cache.peek("a"), 1)
        self.assertIn("a", cache)
        cache.set("c", 3)
        self.assertNotIn("a", cache)

    def test_none_and_a_default_tell_a_cached_none_from_a_miss(self) -> None:
        cache: LruCache[str, int | None] = LruCache("test_lru_none", 2)
        cache.set("absent", None)
        missing = object()
        self.assertIsNone(cache.get("absent", missing))
        self.assertIs(cache.get("other", missing), missing)

    def test_entries_expire_after_their_time_to_live(self) -> None:
        clock = task.Clock()
        cache: LruCache[str, int] = LruCache("test_lru_ttl", 10, ttl_s=60, clock=Clock(clock))
        cache.set("a", 1)
        clock.advance(59)
        self.assertEqual(cache.get("a"), 1)
        cache.set("b", 2)
        clock.advance(1)
        self.assertIsNone(cache.get("a"))
        self.assertEqual(cache.get("b"), 2)
        self.assertEqual(len(cache), 1)

    def test_replace_keeps_the_age_and_ignores_what_is_not_held(self) -> None:
        clock = task.Clock()
        cache: LruCache[str, int] = LruCache("test_lru_replace", 10, ttl_s=60, clock=Clock(clock))
        cache.set("a", 1)
        clock.advance(30)
        cache.replace("a", 2)
        cache.replace("b", 3)
        self.assertEqual(cache.peek("a"), 2)
        self.assertNotIn("b", cache)
        clock.advance(30)
        self.assertNotIn("a", cache)

    def test_pop_and_pop_where(self) -> None:
        cache: LruCache[str, int] = LruCache("test_lru_pop", 10)
        for i, key in enumerate("abcd"):
            cache.set(key, i)
        self.assertEqual(cache.pop("a"), 0)
        self.assertIsNone(cache.pop("a"))
        cache.pop_where(lambda key, value: value % 2 == 1)
        self.assertEqual([k for k in "abcd" if k in cache], ["c"])

    def test_get_many_splits_held_from_missing_keys(self) -> None:
        cache: LruCache[str, int] = LruCache("test_lru_many", 10)
        cache.set("a", 1)
        cache.set("c", 3)
        self.assertEqual(cache.get_many(["a", "b", "c", "d"]), ({"a": 1, "c": 3}, ["b", "d"]))
        self.assertEqual(sample("heddle_cache_hits_total", "test_lru_many"), 2)
        self.assertEqual(sample("heddle_cache_misses_total", "test_lru_many"), 2)

    def test_a_time_to_live_needs_a_clock_and_the_bound_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            LruCache("test_lru_bad", 10, ttl_s=1)
        with self.assertRaises(ValueError):
            LruCache("test_lru_bad", 0)

    def test_metrics_count_hits_misses_evictions_and_size(self) -> None:
        cache: LruCache[str, int] = LruCache("test_lru_metrics", 2)
        cache.set("a", 1)
        cache.set("b", 2)
        cache.set("c", 3)
        cache.get("c")
        cache.get("c")
        cache.get("a")
        self.assertEqual(sample("heddle_cache_hits_total", "test_lru_metrics"), 2)
        self.assertEqual(sample("heddle_cache_misses_total", "test_lru_metrics"), 1)
        self.assertEqual(sample("heddle_cache_evictions_total", "test_lru_metrics"), 1)
        self.assertEqual(sample("heddle_cache_size", "test_lru_metrics"), 2)
        self.assertEqual(sample("heddle_cache_max_size", "test_lru_metrics"), 2)

    def test_a_cache_no_longer_used_leaves_the_size_gauge(self) -> None:
        cache: LruCache[str, int] = LruCache("test_lru_gone", 2)
        cache.set("a", 1)
        self.assertEqual(sample("heddle_cache_size", "test_lru_gone"), 1)
        del cache
        gc.collect()
        self.assertIsNone(REGISTRY.get_sample_value("heddle_cache_size", {"cache": "test_lru_gone"}))


class NotifierPositionsTests(unittest.TestCase):
    """The notifier holds a position per user it ever woke: bounded, without losing wakeups."""

    def notifier(self, bound: int) -> Notifier:
        return Notifier(task.Clock(), state=None, max_user_positions=bound)  # type: ignore[arg-type]

    def test_positions_of_many_users_stay_within_the_bound(self) -> None:
        notifier = self.notifier(4)
        for i in range(50):
            notifier.notify_users([f"@user{i}:{SERVER_NAME}"])
        self.assertLessEqual(len(notifier._positions), 4)

    def test_a_notification_is_not_lost_when_the_user_is_forgotten(self) -> None:
        notifier = self.notifier(4)
        alice = f"@alice:{SERVER_NAME}"
        notifier.notify_users([alice])
        read = notifier.position(alice)
        notifier.notify_users([alice])  # news after the read...
        for i in range(10):  # ...then alice is forgotten
            notifier.notify_users([f"@user{i}:{SERVER_NAME}"])
        self.assertNotIn(alice, notifier._positions)
        self.assertTrue(self.successResultOf(_ensure(notifier.wait(alice, read, 1000))))

    def test_call_on_news_calls_once_on_news_and_withdraw_forgets(self) -> None:
        """What a held WebSocket waits with: one callback, called with the notification's
        time when the news comes after the call; when it came before, nothing is held and the
        time is returned; a withdrawn callback is forgotten."""
        clock = task.Clock()
        notifier = Notifier(clock, state=None, max_user_positions=4)  # type: ignore[arg-type]
        alice = f"@alice:{SERVER_NAME}"
        heard: list[float] = []
        read = notifier.position(alice)
        self.assertIsNone(notifier.call_on_news(alice, read, heard.append))
        clock.advance(5)
        notifier.notify_users([alice])
        notifier.notify_users([alice])
        self.assertEqual(heard, [5])
        self.assertEqual(notifier._waiters, {})
        clock.advance(3)
        # Woken late (news before the call): the time of the notification, nothing held.
        self.assertEqual(notifier.call_on_news(alice, read, heard.append), 5)
        self.assertEqual(notifier._waiters, {})
        # Withdrawn by an equal bound method, not the same object; another waiter stays.
        other: list[float] = []
        self.assertIsNone(notifier.call_on_news(alice, notifier.position(alice), heard.append))
        notifier.call_on_news(alice, notifier.position(alice), other.append)
        notifier.withdraw(alice, heard.append)
        notifier.notify_users([alice])
        self.assertEqual((heard, other), ([5], [8]))
        self.assertEqual(notifier._waiters, {})

    def test_a_failing_callback_does_not_keep_others_asleep(self) -> None:
        notifier = Notifier(task.Clock(), state=None)  # type: ignore[arg-type]
        alice, bob = f"@alice:{SERVER_NAME}", f"@bob:{SERVER_NAME}"
        heard: list[float] = []

        def broken(_at: float) -> None:
            raise RuntimeError("broken")

        notifier.call_on_news(alice, notifier.position(alice), broken)
        notifier.call_on_news(alice, notifier.position(alice), heard.append)
        notifier.call_on_news(bob, notifier.position(bob), heard.append)
        with self.assertLogs("homeserver.sync.notifier", level="ERROR"):
            notifier.notify_users([alice, bob])
        self.assertEqual(heard, [0, 0])

    def test_a_late_waiter_whose_notification_is_too_old_gets_now(self) -> None:
        clock = task.Clock()
        notifier = Notifier(clock, state=None, max_user_positions=10)  # type: ignore[arg-type]
        alice = f"@alice:{SERVER_NAME}"
        read = notifier.position(alice)
        notifier.notify_users([alice])
        for _ in range(NOTIFICATION_TIMES):
            notifier.notify_users([f"@bob:{SERVER_NAME}"])
        clock.advance(7)
        self.assertEqual(notifier.call_on_news(alice, read, lambda _at: None), 7)
        self.assertLessEqual(len(notifier._times), NOTIFICATION_TIMES)

    def test_a_user_never_notified_still_waits(self) -> None:
        notifier = self.notifier(4)
        bob = f"@bob:{SERVER_NAME}"
        read = notifier.position(bob)
        waiting = _ensure(notifier.wait(bob, read, 1000))
        self.assertNoResult(waiting)
        notifier.notify_users([bob])
        self.assertTrue(self.successResultOf(waiting))


def _ensure(coroutine: Any) -> Any:
    return defer.ensureDeferred(coroutine)


async def scrape_cache_sizes(test: HomeserverTestCase) -> dict[str, float]:
    """`heddle_cache_size` by cache, read from the server's /metrics over HTTP."""
    gc.collect()  # earlier tests' stopped servers leave the gauges
    response = await test.request("GET", "/metrics", base_url=test.metrics_url)
    assert response.code == 200, response
    sizes: dict[str, float] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        if family.name == "heddle_cache_size":
            for s in family.samples:
                sizes[s.labels["cache"]] = s.value
    return sizes


class MetricsTests(HomeserverTestCase):
    async def test_metrics_report_the_size_of_every_cache(self) -> None:
        sizes = await scrape_cache_sizes(self)
        missing = SERVER_CACHES - set(sizes)
        self.assertEqual(missing, set())


on_both_engines(MetricsTests)


class BoundedCachesTests(RoomTestCase):
    """With small bounds, many users and rooms over HTTP leave each cache at its bound."""

    BOUND = 3

    def setUp(self) -> Any:
        self.patch(homeserver.auth.tokens, "TOKEN_CACHE_SIZE", self.BOUND)  # type: ignore[attr-defined]
        self.patch(storage.stores.events, "ROOM_VERSION_CACHE_SIZE", self.BOUND)  # type: ignore[attr-defined]
        return super().setUp()

    async def test_access_tokens_beyond_the_bound_are_evicted_and_still_accepted(self) -> None:
        users = [await self.user(f"user{i}") for i in range(2 * self.BOUND)]
        evicted_before = sample("heddle_cache_evictions_total", "access_tokens")
        for _ in range(2):
            for user in users:
                response = await self.request(
                    "GET", "/_matrix/client/v3/account/whoami", token=user.token
                )
                self.assertEqual(response.code, 200, response)
        self.assertEqual((await scrape_cache_sizes(self))["access_tokens"], self.BOUND)
        self.assertGreaterEqual(
            sample("heddle_cache_evictions_total", "access_tokens") - evicted_before,
            len(users),
        )

    async def test_room_versions_of_many_rooms_stay_within_the_bound(self) -> None:
        alice = await self.user("alice")
        for i in range(2 * self.BOUND):
            room_id = await self.create_room(alice)
            await self.send(alice, room_id, {"msgtype": "m.text", "body": f"hello {i}"})
        self.assertEqual((await scrape_cache_sizes(self))["room_versions"], self.BOUND)


on_both_engines(BoundedCachesTests)


class UnreachableServers:
    """A federation client for which every server is down."""

    async def get_json(self, destination: str, path: str, *args: Any, **kwargs: Any) -> Any:
        raise RequestSendFailed(destination, "connection refused")

    async def post_json(self, destination: str, path: str, *args: Any, **kwargs: Any) -> Any:
        raise RequestSendFailed(destination, "connection refused")


class KeyFetchFailuresTests(HomeserverTestCase):
    """Failed key fetches are remembered per server (to back off): notary queries name any
    server, so that memory must stay bounded."""

    def setUp(self) -> Any:
        self.patch(federation.keys, "FAILED_FETCH_CACHE_SIZE", 5)  # type: ignore[attr-defined]
        return super().setUp()

    async def test_failures_of_many_servers_stay_within_the_bound(self) -> None:
        clock = task.Clock()
        clock.advance(1_000_000)
        keyring = KeyRing(
            SERVER_NAME,
            generate_signing_key("k1"),
            FederationConfig.model_validate({}),
            Clock(clock),
            self.hs.server_key_store,
            UnreachableServers(),
        )
        for i in range(20):
            with self.assertRaises(KeyLookupError):
                await keyring.get_verify_key(f"down{i}.example", "ed25519:k", 1_000_000_000)
        self.assertEqual((await scrape_cache_sizes(self))["key_fetch_failures"], 5)
        # The backoff still holds for the servers remembered.
        with self.assertRaises(KeyLookupError) as raised:
            await keyring.get_verify_key("down19.example", "ed25519:k", 1_000_000_000)
        self.assertIn("so soon", str(raised.exception))


on_both_engines(KeyFetchFailuresTests)
