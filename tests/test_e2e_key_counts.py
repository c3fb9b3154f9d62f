"""Devices' key counts in /sync (`device_one_time_keys_count`,
`device_unused_fallback_key_types`) come from memory after the first read, and every write
that changes them makes the next sync read them again: an upload, a claim (over the client
API or federation), a fallback key handed out, a device deleted, an account deactivated.

Each test checks both halves: the counts are right after the change, and the sync after
that reads them from memory. Without the cache the second half fails; with a cache that
misses a write, the first does.

Spec: client-server API "Extensions to /sync" (end-to-end encryption).
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import REGISTRY
from twisted.internet import defer, reactor, task

from homeserver.app import HomeServer
from storage.stores.e2e_keys import E2eKeyStore
from tests.harness import HomeserverTestCase, ensure_deferred, on_both_engines, password_auth
from tests.test_device_lists import API, SIGNED_CURVE, DeviceListCase, Keys
from tests.test_websocket import WebSocketTestCase, timeline_ids

T = TypeVar("T")

# The transactions that read key counts: today's, and the two that every sync pass ran
# before the counts were cached (so the tests fail on a tree without the cache).
KEY_COUNT_READS = ("get_e2e_key_counts", "count_e2e_one_time_keys", "get_e2e_unused_fallback_key_types")


async def key_count_reads(hs: HomeServer, action: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """What `action()` returns, and how many key-count transactions `hs` ran meanwhile."""
    calls: list[str] = []
    original = hs.db.run_interaction

    async def counting(desc: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(desc)
        return await original(desc, *args, **kwargs)

    hs.db.run_interaction = counting  # type: ignore[method-assign]
    try:
        result = await action()
    finally:
        hs.db.run_interaction = original  # type: ignore[method-assign]
    return result, sum(1 for desc in calls if desc in KEY_COUNT_READS)


def transactions_run(desc: str) -> float:
    """`heddle_db_transaction_duration_seconds_count{desc}` (every server in this process)."""
    value = REGISTRY.get_sample_value("heddle_db_transaction_duration_seconds_count", {"desc": desc})
    return value or 0.0


class KeyCountsCase(DeviceListCase):
    async def counts(
        self, user: dict[str, Any], since: str | None = None
    ) -> tuple[dict[str, int], list[str], str]:
        """The user's sync: one-time key counts, unused fallback key types, next_batch."""
        body = await self.sync(user, since)
        return (
            body["device_one_time_keys_count"],
            body["device_unused_fallback_key_types"],
            body["next_batch"],
        )

    async def assert_counts_from_memory(
        self,
        user: dict[str, Any],
        since: str | None,
        one_time: dict[str, int],
        fallback: list[str],
    ) -> str:
        """The user's next sync reports these counts and reads none of them from the database;
        returns its next_batch."""
        (counts, types, next_batch), reads = await key_count_reads(
            self.hs, lambda: self.counts(user, since)
        )
        self.assertEqual((counts, types), (one_time, fallback))
        self.assertEqual(reads, 0, "key counts were read from the database again")
        return next_batch

    async def assert_counts_from_memory_after_one_read(
        self,
        user: dict[str, Any],
        since: str | None,
        one_time: dict[str, int],
        fallback: list[str],
    ) -> str:
        """After a change: the next sync reads the counts once and reports them; the one
        after that reports them from memory."""
        (counts, types, next_batch), reads = await key_count_reads(
            self.hs, lambda: self.counts(user, since)
        )
        self.assertEqual((counts, types), (one_time, fallback))
        self.assertGreaterEqual(reads, 1)
        return await self.assert_counts_from_memory(user, next_batch, one_time, fallback)

    async def claim(self, claimer: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
        """One signed_curve25519 key of `owner`'s device, claimed by `claimer`."""
        wanted = {"one_time_keys": {owner["user_id"]: {owner["device_id"]: SIGNED_CURVE}}}
        r = await self.request("POST", f"{API}/keys/claim", wanted, token=claimer["access_token"])
        self.assertEqual(r.code, 200, r)
        keys: dict[str, Any] = r.json["one_time_keys"][owner["user_id"]][owner["device_id"]]
        return keys


@on_both_engines
class KeyCountsFromMemory(KeyCountsCase):
    async def test_quiet_sync_reads_no_key_counts(self):
        bob = await self.user("bob")
        keys = await self.upload_device_keys(bob)
        await self.upload(bob, {
            "one_time_keys": keys.one_time_keys(2),
            "fallback_keys": keys.one_time_keys(1, fallback=True),
        })
        _, _, since = await self.counts(bob)
        before = {desc: transactions_run(desc) for desc in KEY_COUNT_READS}
        for _ in range(3):
            since = await self.assert_counts_from_memory(
                bob, since, {SIGNED_CURVE: 2}, [SIGNED_CURVE]
            )
        # The same seen from /metrics' side: no key-count transaction ran at all.
        self.assertEqual({desc: transactions_run(desc) for desc in KEY_COUNT_READS}, before)

    async def test_counts_after_upload(self):
        bob = await self.user("bob")
        self.assertEqual((await self.counts(bob))[:2], ({SIGNED_CURVE: 0}, []))
        keys = await self.upload_device_keys(bob)
        r = await self.request("POST", f"{API}/keys/upload", {
            "one_time_keys": keys.one_time_keys(3),
            "fallback_keys": keys.one_time_keys(1, fallback=True),
        }, token=bob["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["one_time_key_counts"], {SIGNED_CURVE: 3})
        self.assertEqual((await self.counts(bob))[:2], ({SIGNED_CURVE: 3}, [SIGNED_CURVE]))
        # More keys, of another algorithm too.
        more = keys.one_time_keys(2)
        more["curve25519:plain"] = base64.b64encode(os.urandom(32)).decode().rstrip("=")
        await self.upload(bob, {"one_time_keys": more})
        await self.assert_counts_from_memory(
            bob, None, {SIGNED_CURVE: 5, "curve25519": 1}, [SIGNED_CURVE]
        )

    async def test_counts_after_a_claim_by_another_user(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        keys = await self.upload_device_keys(bob)
        await self.upload(bob, {"one_time_keys": keys.one_time_keys(3)})
        _, _, since = await self.counts(bob)
        for left in (2, 1, 0):
            await self.claim(alice, bob)
            since = await self.assert_counts_from_memory_after_one_read(
                bob, since, {SIGNED_CURVE: left}, []
            )

    async def test_claimed_fallback_key_becomes_used(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        keys = await self.upload_device_keys(bob)
        fallback = keys.one_time_keys(1, fallback=True)
        await self.upload(bob, {"one_time_keys": keys.one_time_keys(1), "fallback_keys": fallback})
        self.assertEqual((await self.counts(bob))[:2], ({SIGNED_CURVE: 1}, [SIGNED_CURVE]))
        await self.claim(alice, bob)  # the one-time key
        self.assertEqual((await self.counts(bob))[:2], ({SIGNED_CURVE: 0}, [SIGNED_CURVE]))
        self.assertEqual(await self.claim(alice, bob), fallback)
        await self.assert_counts_from_memory_after_one_read(bob, None, {SIGNED_CURVE: 0}, [])
        # A new fallback key is unused again.
        await self.upload(bob, {"fallback_keys": keys.one_time_keys(1, fallback=True)})
        await self.assert_counts_from_memory(bob, None, {SIGNED_CURVE: 0}, [SIGNED_CURVE])

    async def test_deleted_device_id_used_again_starts_from_no_keys(self):
        bob = await self.user("bob")
        second = await self.login("bob", device_id="PHONE")
        keys = await self.upload_device_keys(second)
        await self.upload(second, {
            "one_time_keys": keys.one_time_keys(3),
            "fallback_keys": keys.one_time_keys(1, fallback=True),
        })
        self.assertEqual((await self.counts(second))[:2], ({SIGNED_CURVE: 3}, [SIGNED_CURVE]))
        await self.delete_device(bob, "PHONE")
        # The same device ID logged in again is a new device: its keys went with the old one.
        again = await self.login("bob", device_id="PHONE")
        await self.assert_counts_from_memory_after_one_read(again, None, {SIGNED_CURVE: 0}, [])

    async def test_logout_forgets_the_devices_counts(self):
        await self.user("bob")
        phone = await self.login("bob", device_id="PHONE")
        keys = await self.upload_device_keys(phone)
        await self.upload(phone, {"one_time_keys": keys.one_time_keys(2)})
        self.assertEqual((await self.counts(phone))[0], {SIGNED_CURVE: 2})
        r = await self.request("POST", f"{API}/logout", {}, token=phone["access_token"])
        self.assertEqual(r.code, 200, r)
        again = await self.login("bob", device_id="PHONE")
        await self.assert_counts_from_memory_after_one_read(again, None, {SIGNED_CURVE: 0}, [])

    async def test_deactivation_forgets_the_users_counts(self):
        bob = await self.user("bob")
        keys = await self.upload_device_keys(bob)
        await self.upload(bob, {
            "one_time_keys": keys.one_time_keys(2),
            "fallback_keys": keys.one_time_keys(1, fallback=True),
        })
        self.assertEqual((await self.counts(bob))[:2], ({SIGNED_CURVE: 2}, [SIGNED_CURVE]))
        r = await self.request("POST", f"{API}/account/deactivate",
                               {"auth": password_auth("bob")}, token=bob["access_token"])
        self.assertEqual(r.code, 200, r)
        # Nobody can sync as bob any more: ask the handler, as sync would.
        keys_handler = self.hs.e2e_keys

        async def asked() -> tuple[dict[str, int], list[str]]:
            return (
                await keys_handler.count_one_time_keys(bob["user_id"], bob["device_id"]),
                await keys_handler.unused_fallback_key_types(bob["user_id"], bob["device_id"]),
            )

        for _ in range(2):
            answer, reads = await key_count_reads(self.hs, asked)
            self.assertEqual(answer, ({SIGNED_CURVE: 0}, []))
        self.assertEqual(reads, 0)

    async def test_a_read_overtaken_by_a_claim_is_not_cached(self):
        """Bob's sync reads his counts; before its answer is used, Alice's claim commits and
        forgets them. The sync may answer with the older counts (it began first), but must
        not leave them in memory: the next sync reports the claim."""
        alice, bob = await self.user("alice"), await self.user("bob")
        keys = await self.upload_device_keys(bob)
        await self.upload(bob, {"one_time_keys": keys.one_time_keys(3)})
        await self.claim(alice, bob)  # forgets bob's counts (the upload's answer cached them)

        read_done: defer.Deferred[None] = defer.Deferred()
        release: defer.Deferred[None] = defer.Deferred()
        original = self.hs.db.run_interaction

        async def held(desc: str, *args: Any, **kwargs: Any) -> Any:
            result = await original(desc, *args, **kwargs)
            if desc in KEY_COUNT_READS and not release.called:
                # Read (and committed) with two keys left; its answer waits here.
                if not read_done.called:
                    read_done.callback(None)
                await release
            return result

        self.hs.db.run_interaction = held  # type: ignore[method-assign]
        try:
            syncing = defer.ensureDeferred(self.counts(bob))
            await read_done.addTimeout(10, reactor)  # the sync's read of the counts
            await self.claim(alice, bob)  # commits while the read is in flight
            release.callback(None)
            counts, _, since = await syncing
        finally:
            self.hs.db.run_interaction = original  # type: ignore[method-assign]
            if not release.called:
                release.callback(None)
        self.assertIn(counts, ({SIGNED_CURVE: 2}, {SIGNED_CURVE: 1}))
        # Whatever that sync answered, the next one knows of the claim, and the one after
        # that answers from memory.
        counts, _, since = await self.counts(bob, since)
        self.assertEqual(counts, {SIGNED_CURVE: 1})
        await self.assert_counts_from_memory(bob, since, {SIGNED_CURVE: 1}, [])

    async def test_store_read_overtaken_by_a_write_is_not_cached(self):
        """The same at the store: its read of a device's counts has run, and before the
        answer is used, an upload of one-time keys commits."""
        store = self.hs.e2e_key_store
        bob = await self.user("bob")
        device = (bob["user_id"], bob["device_id"])
        original = self.hs.db.run_interaction
        read_done: defer.Deferred[None] = defer.Deferred()
        release: defer.Deferred[None] = defer.Deferred()

        async def held(desc: str, *args: Any, **kwargs: Any) -> Any:
            result = await original(desc, *args, **kwargs)
            if desc in KEY_COUNT_READS:
                read_done.callback(None)
                await release
            return result

        self.hs.db.run_interaction = held  # type: ignore[method-assign]
        try:
            reading = defer.ensureDeferred(store.get_key_counts(*device))
        finally:
            self.hs.db.run_interaction = original  # type: ignore[method-assign]
        try:
            await read_done.addTimeout(10, reactor)  # read with no keys; its answer waits
            await store.add_one_time_keys(*device, [(SIGNED_CURVE, "K1", "{}")], 0)
        finally:
            release.callback(None)
        self.assertEqual(dict((await reading).one_time_keys), {})
        counts, reads = await key_count_reads(self.hs, lambda: store.get_key_counts(*device))
        self.assertEqual((dict(counts.one_time_keys), reads), ({SIGNED_CURVE: 1}, 1))
        counts, reads = await key_count_reads(self.hs, lambda: store.get_key_counts(*device))
        self.assertEqual((dict(counts.one_time_keys), reads), ({SIGNED_CURVE: 1}, 0))

    async def test_rolled_back_claim_leaves_the_counts_alone(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        keys = await self.upload_device_keys(bob)
        await self.upload(bob, {"one_time_keys": keys.one_time_keys(2)})
        _, _, since = await self.counts(bob)
        # A claim whose transaction fails after deleting the key: nothing committed, so the
        # counts held stay right and are not forgotten.
        original = self.hs.db.run_interaction

        async def failing(desc: str, func: Any, *args: Any, **kwargs: Any) -> Any:
            if desc != "claim_e2e_keys":
                return await original(desc, func, *args, **kwargs)

            def claim_then_fail(txn: Any) -> None:
                func(txn, *args, **kwargs)
                raise RuntimeError("rolled back")

            return await original(desc, claim_then_fail)

        self.hs.db.run_interaction = failing  # type: ignore[method-assign]
        try:
            r = await self.request(
                "POST", f"{API}/keys/claim",
                {"one_time_keys": {bob["user_id"]: {bob["device_id"]: SIGNED_CURVE}}},
                token=alice["access_token"],
            )
        finally:
            self.hs.db.run_interaction = original  # type: ignore[method-assign]
        self.assertEqual(r.code, 500, r)
        await self.assert_counts_from_memory(bob, since, {SIGNED_CURVE: 2}, [])

    async def test_listeners_woken_by_a_message_read_no_key_counts(self):
        """The case the cache is for: one message wakes every long-polling member of a room,
        and none of their sync passes reads key counts."""
        speaker = await self.user("speaker")
        listeners = [await self.user(f"listener{i}") for i in range(5)]
        room_id = await self.shared_room(speaker, *listeners)

        async def offline_sync(user: dict[str, Any], since: str | None, timeout: int = 0) -> Any:
            # Offline: listeners coming online would wake each other with presence.
            path = f"{API}/sync?timeout={timeout}&set_presence=offline"
            r = await self.request(
                "GET", path + (f"&since={since}" if since else ""), token=user["access_token"]
            )
            self.assertEqual(r.code, 200, r)
            return r.json

        sinces = []
        for i, listener in enumerate(listeners):
            keys = await self.upload_device_keys(listener)
            await self.upload(listener, {"one_time_keys": keys.one_time_keys(i + 1)})
        for listener in listeners:
            sinces.append((await offline_sync(listener, None))["next_batch"])

        async def one_message() -> list[Any]:
            polls = [
                defer.ensureDeferred(offline_sync(listener, since, timeout=10_000))
                for listener, since in zip(listeners, sinces, strict=True)
            ]
            for _ in range(250):
                if len(self.hs.notifier._waiters) >= len(listeners):
                    break
                await task.deferLater(reactor, 0.02, lambda: None)
            r = await self.request(
                "PUT", f"{API}/rooms/{room_id}/send/m.room.message/t1",
                {"msgtype": "m.text", "body": "hello"}, token=speaker["access_token"],
            )
            self.assertEqual(r.code, 200, r)
            return list(await defer.gatherResults(polls))

        bodies, reads = await key_count_reads(self.hs, one_message)
        for i, body in enumerate(bodies):
            self.assertIn(room_id, body["rooms"]["join"])
            self.assertEqual(body["device_one_time_keys_count"], {SIGNED_CURVE: i + 1})
        self.assertEqual(reads, 0)

    async def test_cache_holds_a_bounded_number_of_devices(self):
        store = E2eKeyStore(self.hs.db, key_counts_devices=2)
        devices = [("@bob:test.heddle", f"D{i}") for i in range(3)]
        for device in devices:
            await store.get_key_counts(*device)
        self.assertEqual(len(store._key_counts), 2)
        # The least recently used was dropped: it alone is read again.
        for device in reversed(devices):
            _, reads = await key_count_reads(self.hs, lambda d=device: store.get_key_counts(*d))
            self.assertEqual(reads, 1 if device == devices[0] else 0, device)


@on_both_engines
class KeyCountsOverWebSocket(WebSocketTestCase):
    @ensure_deferred
    async def test_pushed_syncs_read_no_key_counts(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        keys = Keys(alice.user_id, alice.device_id)
        for body in ({"device_keys": keys.device_keys()}, {"one_time_keys": keys.one_time_keys(4)}):
            r = await self.request("POST", f"{API}/keys/upload", body, token=alice.token)
            self.assertEqual(r.code, 200, r)
        client = await self.subscribed(alice)
        self.assertEqual(client.syncs()[0]["device_one_time_keys_count"], {SIGNED_CURVE: 4})

        async def pushed_after_message() -> dict[str, Any]:
            await self.send(bob, room_id, {"msgtype": "m.text", "body": "hi"})
            return await client.next_sync(1)

        pushed, reads = await key_count_reads(self.hs, pushed_after_message)
        self.assertIn(room_id, pushed["rooms"]["join"])
        self.assertEqual(pushed["device_one_time_keys_count"], {SIGNED_CURVE: 4})
        self.assertEqual(reads, 0)

        # A claim of Alice's key is pushed to her with the new count.
        r = await self.request(
            "POST", f"{API}/keys/claim",
            {"one_time_keys": {alice.user_id: {alice.device_id: SIGNED_CURVE}}}, token=bob.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.send(bob, room_id, {"msgtype": "m.text", "body": "again"})
        event_id = r.json["event_id"]

        def pushed_again() -> list[dict[str, Any]]:
            return [b for b in client.syncs() if event_id in timeline_ids(b, room_id)]

        await client.wait_for(pushed_again)
        pushed = pushed_again()[0]
        self.assertEqual(pushed["device_one_time_keys_count"], {SIGNED_CURVE: 3})


@on_both_engines
class KeyCountsFanOut(HomeserverTestCase):
    """Two processes on one database and Redis: a claim on one makes the other forget the
    device's counts."""

    def setUp(self):
        prefix = f"heddle-test-{uuid.uuid4().hex}"
        return defer.ensureDeferred(
            self.start_server(redis={"enabled": True, "channel_prefix": prefix})
        )

    async def start_second_server(self) -> HomeServer:
        other = HomeServer(self.hs.config, reactor, writer_lock=False)
        await other.setup()
        other.start_listening()
        self.addCleanup(lambda: defer.ensureDeferred(other.stop()))
        # What this process publishes and the other receives, to know when all arrived.
        self.published: list[Any] = []
        self.received: list[Any] = []
        self.hs.e2e_key_store.key_counts_listeners.append(self.published.append)
        forget = other.e2e_key_store.forget_key_counts

        def counting(devices: Any) -> None:
            devices = list(devices)
            self.received.append(devices)
            forget(devices)

        other.e2e_key_store.forget_key_counts = counting  # type: ignore[method-assign]
        return other

    async def fan_out_delivered(self) -> None:
        for _ in range(100):
            if len(self.received) >= len(self.published):
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"{len(self.published)} published, {len(self.received)} received")

    async def test_claim_on_one_process_reaches_the_others_cache(self):
        other = await self.start_second_server()
        alice, bob = await self.register("alice"), await self.register("bob")
        keys = Keys(bob["user_id"], bob["device_id"])
        for body in ({"device_keys": keys.device_keys()}, {"one_time_keys": keys.one_time_keys(2)}):
            r = await self.request("POST", f"{API}/keys/upload", body, token=bob["access_token"])
            self.assertEqual(r.code, 200, r)
        await self.fan_out_delivered()
        device = (bob["user_id"], bob["device_id"])
        # The second process reads and caches bob's counts.
        counts = await other.e2e_key_store.get_key_counts(*device)
        self.assertEqual(dict(counts.one_time_keys), {SIGNED_CURVE: 2})
        _, reads = await key_count_reads(other, lambda: other.e2e_key_store.get_key_counts(*device))
        self.assertEqual(reads, 0)

        r = await self.request(
            "POST", f"{API}/keys/claim",
            {"one_time_keys": {bob["user_id"]: {bob["device_id"]: SIGNED_CURVE}}},
            token=alice["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        await self.fan_out_delivered()
        self.assertEqual(self.received[-1], [device])
        counts = await other.e2e_key_store.get_key_counts(*device)
        self.assertEqual(dict(counts.one_time_keys), {SIGNED_CURVE: 1})
