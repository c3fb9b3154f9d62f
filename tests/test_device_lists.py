"""Device lists in /sync and GET /keys/changes, on one server: `device_lists.changed` and
`left`, one-time key counts and unused fallback key types, to-device events, and long-polls
woken by device changes.

Spec: client-server API "Tracking the device list for a user", "Extensions to /sync"
(end-to-end encryption), api/client-server/keys.yaml (/keys/changes).
"""

from __future__ import annotations

import base64
import os
from typing import Any
from urllib.parse import quote

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.internet import defer, reactor

from homeserver.sync.tokens import StreamToken
from tests.harness import HomeserverTestCase, on_both_engines, password_auth

API = "/_matrix/client/v3"
SIGNED_CURVE = "signed_curve25519"


def q(value: str) -> str:
    return quote(value, safe="")


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


class Keys:
    """A device's keys, signed as a client signs them."""

    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.signing_key = generate_signing_key(device_id)
        self.counter = 0

    def device_keys(self) -> dict[str, Any]:
        ed25519 = encode_verify_key_base64(get_verify_key(self.signing_key))
        keys = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{self.device_id}": _key(), f"ed25519:{self.device_id}": ed25519},
        }
        return sign_json(keys, self.user_id, self.signing_key)

    def one_time_keys(self, count: int, fallback: bool = False) -> dict[str, Any]:
        keys = {}
        for _ in range(count):
            self.counter += 1
            key: dict[str, Any] = {"key": _key()}
            if fallback:
                key["fallback"] = True
            keys[f"{SIGNED_CURVE}:K{self.counter:05d}"] = sign_json(
                key, self.user_id, self.signing_key
            )
        return keys


def cross_signing_body(user_id: str) -> dict[str, Any]:
    keys = {}
    for usage in ("master", "self_signing", "user_signing"):
        signing_key = generate_signing_key("x")
        public = encode_verify_key_base64(get_verify_key(signing_key))
        signing_key.version = public
        keys[usage] = (signing_key, {
            "user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public},
        })
    master_signing_key, master = keys["master"]
    body = {"master_key": master}
    for usage in ("self_signing", "user_signing"):
        body[f"{usage}_key"] = sign_json(keys[usage][1], user_id, master_signing_key)
    return body


class DeviceListCase(HomeserverTestCase):
    async def user(self, name: str) -> dict[str, Any]:
        return await self.register(name)

    async def sync(self, user: dict[str, Any], since: str | None = None, timeout: int = 0) -> Any:
        path = f"{API}/sync?timeout={timeout}" + (f"&since={since}" if since else "")
        r = await self.request("GET", path, token=user["access_token"])
        self.assertEqual(r.code, 200, r)
        return r.json

    async def token(self, user: dict[str, Any]) -> str:
        return str((await self.sync(user))["next_batch"])

    async def device_lists(self, user: dict[str, Any], since: str) -> dict[str, list[str]]:
        lists: dict[str, list[str]] = (await self.sync(user, since))["device_lists"]
        return lists

    async def shared_room(self, *users: dict[str, Any]) -> str:
        r = await self.request("POST", f"{API}/createRoom", {"preset": "public_chat"},
                               token=users[0]["access_token"])
        self.assertEqual(r.code, 200, r)
        room_id = str(r.json["room_id"])
        for user in users[1:]:
            await self.join(user, room_id)
        return room_id

    async def join(self, user: dict[str, Any], room_id: str) -> None:
        r = await self.request("POST", f"{API}/join/{q(room_id)}", {}, token=user["access_token"])
        self.assertEqual(r.code, 200, r)

    async def leave(self, user: dict[str, Any], room_id: str) -> None:
        r = await self.request("POST", f"{API}/rooms/{q(room_id)}/leave", {},
                               token=user["access_token"])
        self.assertEqual(r.code, 200, r)

    async def upload(self, user: dict[str, Any], body: dict[str, Any]) -> Any:
        r = await self.request("POST", f"{API}/keys/upload", body, token=user["access_token"])
        self.assertEqual(r.code, 200, r)
        return r.json

    async def upload_device_keys(self, user: dict[str, Any]) -> Keys:
        keys = Keys(user["user_id"], user["device_id"])
        await self.upload(user, {"device_keys": keys.device_keys()})
        return keys

    async def new_device(self, user: dict[str, Any]) -> dict[str, Any]:
        localpart = user["user_id"][1:].split(":")[0]
        return await self.login(localpart)

    async def delete_device(self, user: dict[str, Any], device_id: str) -> None:
        localpart = user["user_id"][1:].split(":")[0]
        r = await self.request("DELETE", f"{API}/devices/{q(device_id)}",
                               {"auth": password_auth(localpart)}, token=user["access_token"])
        self.assertEqual(r.code, 200, r)

    async def count_rows(self, table: str, user_id: str, device_id: str) -> int:
        row = await self.hs.db.run_interaction(
            "test_count",
            lambda txn: txn.select_one(
                f"SELECT COUNT(*) FROM {table} WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ),
        )
        return int(row[0])


@on_both_engines
class DeviceListsInSync(DeviceListCase):
    async def test_room_mate_uploading_keys_is_changed_not_for_strangers(self):
        alice, bob, carol = await self.user("alice"), await self.user("bob"), await self.user("carol")
        await self.shared_room(alice, bob)
        since = {name: await self.token(u) for name, u in
                 (("alice", alice), ("bob", bob), ("carol", carol))}
        await self.upload_device_keys(bob)
        self.assertEqual(await self.device_lists(alice, since["alice"]),
                         {"changed": [bob["user_id"]], "left": []})
        # Bob's own other devices must hear of it too.
        self.assertEqual((await self.device_lists(bob, since["bob"]))["changed"], [bob["user_id"]])
        # Carol shares no room with Bob.
        self.assertEqual(await self.device_lists(carol, since["carol"]),
                         {"changed": [], "left": []})

    async def test_initial_sync_has_empty_device_lists(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        await self.shared_room(alice, bob)
        await self.upload_device_keys(bob)
        self.assertEqual((await self.sync(alice))["device_lists"], {"changed": [], "left": []})

    async def test_new_device_rename_and_deletion_are_changed(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        await self.shared_room(alice, bob)
        since = await self.token(alice)
        second = await self.new_device(bob)
        lists = await self.sync(alice, since)
        self.assertEqual(lists["device_lists"]["changed"], [bob["user_id"]])

        since = lists["next_batch"]
        r = await self.request("PUT", f"{API}/devices/{q(second['device_id'])}",
                               {"display_name": "phone"}, token=bob["access_token"])
        self.assertEqual(r.code, 200, r)
        lists = await self.sync(alice, since)
        self.assertEqual(lists["device_lists"]["changed"], [bob["user_id"]])

        since = lists["next_batch"]
        await self.delete_device(bob, second["device_id"])
        lists = await self.sync(alice, since)
        self.assertEqual(lists["device_lists"]["changed"], [bob["user_id"]])

        # Deleting a device that does not exist changes nothing.
        since = lists["next_batch"]
        await self.delete_device(bob, "NOSUCHDEVICE")
        self.assertEqual(await self.device_lists(alice, since), {"changed": [], "left": []})

    async def test_cross_signing_upload_is_changed(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        await self.shared_room(alice, bob)
        since = await self.token(alice)
        r = await self.request("POST", f"{API}/keys/device_signing/upload",
                               cross_signing_body(bob["user_id"]), token=bob["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.device_lists(alice, since))["changed"], [bob["user_id"]])

    async def test_left_after_leaving_the_only_shared_room(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.shared_room(alice, bob)
        alice_since, bob_since = await self.token(alice), await self.token(bob)
        await self.leave(bob, room_id)
        self.assertEqual(await self.device_lists(alice, alice_since),
                         {"changed": [], "left": [bob["user_id"]]})
        self.assertEqual(await self.device_lists(bob, bob_since),
                         {"changed": [], "left": [alice["user_id"]]})

    async def test_not_left_while_another_room_is_shared(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        first = await self.shared_room(alice, bob)
        await self.shared_room(alice, bob)
        since = await self.token(alice)
        await self.leave(bob, first)
        self.assertEqual(await self.device_lists(alice, since), {"changed": [], "left": []})

    async def test_changed_after_joining(self):
        alice, bob, carol = await self.user("alice"), await self.user("bob"), await self.user("carol")
        room_id = await self.shared_room(alice, bob)
        alice_since, carol_since = await self.token(alice), await self.token(carol)
        await self.join(carol, room_id)
        # Alice and Carol now share a room: each should fetch the other's devices.
        self.assertEqual(await self.device_lists(alice, alice_since),
                         {"changed": [carol["user_id"]], "left": []})
        self.assertEqual(
            await self.device_lists(carol, carol_since),
            {"changed": sorted([alice["user_id"], bob["user_id"]]), "left": []},
        )

    async def test_profile_changes_are_not_membership_changes(self):
        # A new display name is an m.room.member event (join -> join) in every room: it
        # changes whom nobody shares a room with, so nobody is told to refetch devices.
        alice, bob = await self.user("alice"), await self.user("bob")
        await self.shared_room(alice, bob)
        alice_since, bob_since = await self.token(alice), await self.token(bob)
        r = await self.request("PUT", f"{API}/profile/{q(bob['user_id'])}/displayname",
                               {"displayname": "Bobby"}, token=bob["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.device_lists(alice, alice_since), {"changed": [], "left": []})
        self.assertEqual(await self.device_lists(bob, bob_since), {"changed": [], "left": []})

    async def test_left_room_mate_changes_are_not_reported(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.shared_room(alice, bob)
        await self.leave(bob, room_id)
        since = await self.token(alice)
        await self.upload_device_keys(bob)
        self.assertEqual(await self.device_lists(alice, since), {"changed": [], "left": []})

    async def test_token_carries_device_list_position(self):
        alice = await self.user("alice")
        before = StreamToken.parse(await self.token(alice))
        await self.upload_device_keys(alice)
        after = StreamToken.parse(await self.token(alice))
        self.assertGreater(after.device_lists, before.device_lists)

    async def test_quiet_sync_reads_no_device_lists(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        await self.shared_room(alice, bob)
        await self.upload_device_keys(bob)
        since = await self.token(alice)
        calls: list[str] = []
        original = self.hs.db.run_interaction

        async def counting(desc: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(desc)
            return await original(desc, *args, **kwargs)

        self.hs.db.run_interaction = counting  # type: ignore[method-assign]
        try:
            body = await self.sync(alice, since)
        finally:
            self.hs.db.run_interaction = original  # type: ignore[method-assign]
        self.assertEqual(body["device_lists"], {"changed": [], "left": []})
        for desc in calls:
            self.assertNotIn("device_list", desc)
            self.assertNotIn("sharing", desc)
            self.assertNotIn("inbox", desc)


@on_both_engines
class DeviceDeletion(DeviceListCase):
    async def test_deleting_a_device_removes_its_keys_and_messages(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        second = await self.new_device(bob)
        keys = await self.upload_device_keys(second)
        await self.upload(second, {
            "one_time_keys": keys.one_time_keys(3),
            "fallback_keys": keys.one_time_keys(1, fallback=True),
        })
        r = await self.request(
            "PUT", f"{API}/sendToDevice/org.example.ping/t1",
            {"messages": {bob["user_id"]: {second["device_id"]: {"n": 1}}}},
            token=alice["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        device = (bob["user_id"], second["device_id"])
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "device_inbox"):
            self.assertGreater(await self.count_rows(table, *device), 0, table)

        await self.delete_device(bob, second["device_id"])
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "device_inbox"):
            self.assertEqual(await self.count_rows(table, *device), 0, table)
        r = await self.request("POST", f"{API}/keys/query",
                               {"device_keys": {bob["user_id"]: []}}, token=alice["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["device_keys"][bob["user_id"]], {})
        # The deleted device's token is gone with it.
        r = await self.request("GET", f"{API}/sync", token=second["access_token"])
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")


@on_both_engines
class KeyCountsInSync(DeviceListCase):
    async def test_one_time_key_counts_and_fallback_types(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        body = await self.sync(bob)
        self.assertEqual(body["device_one_time_keys_count"], {SIGNED_CURVE: 0})
        self.assertEqual(body["device_unused_fallback_key_types"], [])

        keys = await self.upload_device_keys(bob)
        await self.upload(bob, {
            "one_time_keys": keys.one_time_keys(2),
            "fallback_keys": keys.one_time_keys(1, fallback=True),
        })
        body = await self.sync(bob)
        self.assertEqual(body["device_one_time_keys_count"], {SIGNED_CURVE: 2})
        self.assertEqual(body["device_unused_fallback_key_types"], [SIGNED_CURVE])

        claim = {"one_time_keys": {bob["user_id"]: {bob["device_id"]: SIGNED_CURVE}}}
        for expected in (1, 0):
            r = await self.request("POST", f"{API}/keys/claim", claim, token=alice["access_token"])
            self.assertEqual(r.code, 200, r)
            since = body["next_batch"]
            body = await self.sync(bob, since)
            self.assertEqual(body["device_one_time_keys_count"], {SIGNED_CURVE: expected})
        # No one-time keys left: the fallback key is handed out, and is no longer unused.
        r = await self.request("POST", f"{API}/keys/claim", claim, token=alice["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len(r.json["one_time_keys"][bob["user_id"]][bob["device_id"]]), 1)
        body = await self.sync(bob, body["next_batch"])
        self.assertEqual(body["device_unused_fallback_key_types"], [])

    async def test_counts_are_per_device(self):
        bob = await self.user("bob")
        second = await self.new_device(bob)
        keys = await self.upload_device_keys(second)
        await self.upload(second, {"one_time_keys": keys.one_time_keys(4)})
        self.assertEqual((await self.sync(second))["device_one_time_keys_count"], {SIGNED_CURVE: 4})
        self.assertEqual((await self.sync(bob))["device_one_time_keys_count"], {SIGNED_CURVE: 0})


@on_both_engines
class ToDeviceInSync(DeviceListCase):
    async def test_delivered_once_then_acknowledged(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        since = await self.token(bob)
        r = await self.request(
            "PUT", f"{API}/sendToDevice/org.example.ping/t1",
            {"messages": {bob["user_id"]: {bob["device_id"]: {"n": 1}}}},
            token=alice["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        body = await self.sync(bob, since)
        self.assertEqual(
            body["to_device"]["events"],
            [{"sender": alice["user_id"], "type": "org.example.ping", "content": {"n": 1}}],
        )
        next_batch = body["next_batch"]
        self.assertGreater(StreamToken.parse(next_batch).to_device, StreamToken.parse(since).to_device)
        # Syncing again from the old token repeats it; from the new one it is gone, and
        # deleted from the inbox.
        self.assertEqual(len((await self.sync(bob, since))["to_device"]["events"]), 1)
        self.assertEqual((await self.sync(bob, next_batch))["to_device"]["events"], [])
        self.assertEqual(await self.count_rows("device_inbox", bob["user_id"], bob["device_id"]), 0)

    async def test_long_poll_woken_by_to_device(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        since = await self.token(bob)
        started = reactor.seconds()
        poll = defer.ensureDeferred(self.sync(bob, since, timeout=20_000))
        r = await self.request(
            "PUT", f"{API}/sendToDevice/org.example.ping/t1",
            {"messages": {bob["user_id"]: {"*": {"n": 1}}}}, token=alice["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        body = await poll
        self.assertLess(reactor.seconds() - started, 10)
        self.assertEqual(len(body["to_device"]["events"]), 1)


@on_both_engines
class LongPollWokenByDeviceChanges(DeviceListCase):
    async def test_room_mate_key_upload_wakes_long_poll(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        await self.shared_room(alice, bob)
        since = await self.token(alice)
        started = reactor.seconds()
        poll = defer.ensureDeferred(self.sync(alice, since, timeout=20_000))
        await self.upload_device_keys(bob)
        body = await poll
        self.assertLess(reactor.seconds() - started, 10)
        self.assertEqual(body["device_lists"]["changed"], [bob["user_id"]])

    async def test_own_new_device_wakes_long_poll(self):
        alice = await self.user("alice")
        since = await self.token(alice)
        poll = defer.ensureDeferred(self.sync(alice, since, timeout=20_000))
        started = reactor.seconds()
        await self.new_device(alice)
        body = await poll
        self.assertLess(reactor.seconds() - started, 10)
        self.assertEqual(body["device_lists"]["changed"], [alice["user_id"]])

    async def test_strangers_change_does_not_wake(self):
        alice, carol = await self.user("alice"), await self.user("carol")
        since = await self.token(alice)
        started = reactor.seconds()
        poll = defer.ensureDeferred(self.sync(alice, since, timeout=1500))
        await self.upload_device_keys(carol)
        body = await poll
        self.assertGreaterEqual(reactor.seconds() - started, 1.4)
        self.assertEqual(body["device_lists"], {"changed": [], "left": []})


@on_both_engines
class KeysChanges(DeviceListCase):
    async def test_changes_between_tokens(self):
        alice, bob, carol = await self.user("alice"), await self.user("bob"), await self.user("carol")
        room_id = await self.shared_room(alice, bob)
        first = await self.token(alice)
        await self.upload_device_keys(bob)
        await self.upload_device_keys(carol)
        second = await self.token(alice)

        async def changes(**params: str) -> Any:
            query = "&".join(f"{k}={q(v)}" for k, v in params.items())
            r = await self.request("GET", f"{API}/keys/changes?{query}",
                                   token=alice["access_token"])
            self.assertEqual(r.code, 200, r)
            return r.json

        self.assertEqual(await changes(**{"from": first, "to": second}),
                         {"changed": [bob["user_id"]], "left": []})
        self.assertEqual(await changes(**{"from": second, "to": second}),
                         {"changed": [], "left": []})
        # `to` is optional here (it only bounds the answer).
        self.assertEqual(await changes(**{"from": first}), {"changed": [bob["user_id"]], "left": []})
        await self.leave(bob, room_id)
        third = await self.token(alice)
        self.assertEqual(await changes(**{"from": second, "to": third}),
                         {"changed": [], "left": [bob["user_id"]]})
        # A `to` before the change does not include it.
        self.assertEqual(await changes(**{"from": first, "to": first}),
                         {"changed": [], "left": []})

    async def test_bad_requests(self):
        alice = await self.user("alice")
        token = await self.token(alice)
        r = await self.request("GET", f"{API}/keys/changes?to={token}", token=alice["access_token"])
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.request("GET", f"{API}/keys/changes?from=garbage&to={token}",
                               token=alice["access_token"])
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", f"{API}/keys/changes?from={token}&to=t1-2",
                               token=alice["access_token"])
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", f"{API}/keys/changes?from={token}&to={token}")
        self.assertError(r, 401, "M_MISSING_TOKEN")
