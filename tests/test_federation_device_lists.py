"""Device lists between two Heddles: m.device_list_update and m.signing_key_update EDUs
both ways, the remote user's cached list kept up to date by them, a resync through
`user/devices` when an update was missed, and the local room-mate's /sync told of changes.

Spec: server-server API "Device Management" (user/devices, m.device_list_update), "End-to-
End Encryption" (m.signing_key_update); client-server API "Tracking the device list for a
user".
"""

from __future__ import annotations

from typing import Any

from federation.errors import HttpResponseError
from tests.federation_helpers import API, FederationTestCase, FedUser, Server, q
from tests.harness import on_both_engines, password_auth
from tests.test_device_lists import Keys, cross_signing_body

USER_DEVICES = "/_matrix/federation/v1/user/devices/"


@on_both_engines
class FederatedDeviceLists(FederationTestCase):
    async def setup_room(self) -> tuple[Server, Server, FedUser, FedUser, str]:
        a, b, alice, bob, room_id = await self.shared_room()
        # Count B's answers to user/devices (A's resyncs of bob's list).
        self.resyncs = 0
        serve = b.hs.device_lists.get_user_devices_for_federation

        async def counting(user_id: str) -> Any:
            self.resyncs += 1
            return await serve(user_id)

        b.hs.device_lists.get_user_devices_for_federation = counting  # type: ignore[method-assign]
        return a, b, alice, bob, room_id

    async def upload_keys(self, user: FedUser, device_id: str) -> dict[str, Any]:
        device_keys = Keys(user.user_id, device_id).device_keys()
        r = await self.user_call(user, "POST", f"{API}/keys/upload", {"device_keys": device_keys})
        assert r.code == 200, r
        return device_keys

    async def sync_token(self, user: FedUser) -> str:
        r = await self.user_call(user, "GET", f"{API}/sync")
        assert r.code == 200, r
        return str(r.json["next_batch"])

    async def wait_for_changed(self, user: FedUser, since: str, changed: str, what: str) -> str:
        """Poll the user's sync from `since` until `changed` is in device_lists.changed;
        returns the next token."""
        token = since

        async def reported() -> bool:
            nonlocal token
            r = await self.user_call(user, "GET", f"{API}/sync?since={token}&timeout=0")
            assert r.code == 200, r
            token = r.json["next_batch"]
            return changed in r.json["device_lists"]["changed"]

        await self.wait_for(reported, what=what)
        return token

    async def cached(self, server: Server, user_id: str) -> Any:
        """What the server holds of a remote user's list, without fetching it."""
        store = server.hs.device_list_store
        remote = await store.get_remote_user(user_id)
        if remote is None:
            return None
        return remote, {d.device_id: d for d in await store.get_remote_devices(user_id)}

    async def track(self, a: Server, alice: FedUser, bob: FedUser, device_id: str) -> str:
        """Bob uploads keys; A, which did not track him, fetches his list; alice hears."""
        since = await self.sync_token(alice)
        await self.upload_keys(bob, device_id)
        since = await self.wait_for_changed(alice, since, bob.user_id, "bob's keys in alice's sync")

        async def tracked() -> bool:
            held = await self.cached(a, bob.user_id)
            return held is not None and device_id in held[1] and held[1][device_id].keys is not None

        await self.wait_for(tracked, what="bob's list cached on A")
        return since

    async def test_remote_device_changes_reach_the_room_mate(self):
        a, b, alice, bob, _ = await self.setup_room()
        first = await self.device_of(bob)
        since = await self.track(a, alice, bob, first)
        self.assertEqual(self.resyncs, 1)

        # A second device: its EDU follows the last one, so A applies it without a fetch.
        second_bob, second = await self.second_device(bob)
        since = await self.wait_for_changed(alice, since, bob.user_id, "bob's new device")
        keys = await self.upload_keys(second_bob, second)
        since = await self.wait_for_changed(alice, since, bob.user_id, "keys of bob's new device")

        async def both_devices() -> Any:
            held = await a.hs.device_lists.get_cached_remote_keys(bob.user_id)
            return held is not None and set(held.devices) == {first, second}

        await self.wait_for(both_devices, what="both devices on A")
        held = await a.hs.device_lists.get_cached_remote_keys(bob.user_id)
        self.assertEqual(held.devices[second]["keys"], keys["keys"])
        self.assertEqual(held.devices[second]["signatures"], keys["signatures"])
        self.assertEqual(self.resyncs, 1)

        # Alice's /keys/query is answered from A's copy.
        r = await self.user_call(alice, "POST", f"{API}/keys/query",
                                 {"device_keys": {bob.user_id: []}})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(set(r.json["device_keys"][bob.user_id]), {first, second})
        self.assertEqual(self.resyncs, 1)

        # Deleting the device: gone from A's copy, and alice is told.
        r = await self.user_call(bob, "DELETE", f"{API}/devices/{q(second)}",
                                 {"auth": password_auth("bob")})
        self.assertEqual(r.code, 200, r)
        await self.wait_for_changed(alice, since, bob.user_id, "bob's deleted device")

        async def deleted() -> bool:
            held = await self.cached(a, bob.user_id)
            return held is not None and set(held[1]) == {first}

        await self.wait_for(deleted, what="the deletion on A")
        self.assertEqual(self.resyncs, 1)

    async def test_local_changes_reach_the_remote_room_mate(self):
        a, b, alice, bob, _ = await self.setup_room()
        since = await self.sync_token(bob)
        await self.upload_keys(alice, await self.device_of(alice))
        await self.wait_for_changed(bob, since, alice.user_id, "alice's keys in bob's sync")

    async def test_missed_update_resyncs_through_user_devices(self):
        a, b, alice, bob, _ = await self.setup_room()
        first = await self.device_of(bob)
        since = await self.track(a, alice, bob, first)
        self.assertEqual(self.resyncs, 1)

        # A loses the next update (a rename).
        handlers = a.hs.federation_transactions.edu_handlers
        apply = handlers["m.device_list_update"]
        dropped: list[dict[str, Any]] = []

        async def drop(origin: str, content: dict[str, Any]) -> None:
            dropped.append(content)

        handlers["m.device_list_update"] = drop
        r = await self.user_call(bob, "PUT", f"{API}/devices/{q(first)}",
                                 {"display_name": "bob's laptop"})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(lambda: self._async(bool(dropped)), what="the lost update")
        handlers["m.device_list_update"] = apply

        # The next one names the lost one as prev_id: A sees the gap and fetches the list.
        second_bob, second = await self.second_device(bob)
        await self.wait_for(lambda: self._async(self.resyncs == 2), what="a resync")
        await self.wait_for_changed(alice, since, bob.user_id, "bob's changes after the resync")

        async def renamed() -> bool:
            held = await a.hs.device_lists.get_cached_remote_keys(bob.user_id)
            if held is None or first not in held.devices:
                return False
            return held.devices[first].get("unsigned", {}).get("device_display_name") == (
                "bob's laptop"
            )

        await self.wait_for(renamed, what="the rename on A")
        remote, _ = await self.cached(a, bob.user_id)
        self.assertFalse(remote.stale)
        self.assertEqual(self.resyncs, 2)

    async def test_signing_key_update(self):
        a, b, alice, bob, _ = await self.setup_room()
        since = await self.track(a, alice, bob, await self.device_of(bob))
        body = cross_signing_body(bob.user_id)
        r = await self.user_call(bob, "POST", f"{API}/keys/device_signing/upload", body)
        self.assertEqual(r.code, 200, r)
        await self.wait_for_changed(alice, since, bob.user_id, "bob's cross-signing keys")

        async def master_on_a() -> bool:
            held = await a.hs.device_lists.get_cached_remote_keys(bob.user_id)
            return held is not None and held.master_key is not None

        await self.wait_for(master_on_a, what="bob's master key on A")
        held = await a.hs.device_lists.get_cached_remote_keys(bob.user_id)
        self.assertEqual(held.master_key["keys"], body["master_key"]["keys"])
        self.assertEqual(held.self_signing_key["keys"], body["self_signing_key"]["keys"])
        # Applied from the EDU, not fetched.
        self.assertEqual(self.resyncs, 1)

    async def test_untracked_after_leaving(self):
        a, b, alice, bob, room_id = await self.setup_room()
        await self.track(a, alice, bob, await self.device_of(bob))
        since = await self.sync_token(alice)
        r = await self.user_call(bob, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)

        async def left() -> bool:
            r = await self.user_call(alice, "GET", f"{API}/sync?since={since}&timeout=0")
            return bob.user_id in r.json["device_lists"]["left"]

        await self.wait_for(left, what="bob in alice's device_lists.left")
        # No local user shares a room with bob: his list is no longer kept (his server
        # stops sending updates), nor fetched when asked for.
        self.assertIsNone(await self.cached(a, bob.user_id))
        self.assertIsNone(await a.hs.device_lists.get_cached_remote_keys(bob.user_id))
        self.assertEqual(self.resyncs, 1)

    async def test_updates_from_the_wrong_server_are_dropped(self):
        a, b, alice, bob, _ = await self.setup_room()
        first = await self.device_of(bob)
        await self.track(a, alice, bob, first)
        position = a.hs.device_lists.current_position
        remote, _ = await self.cached(a, bob.user_id)
        forged = {
            "user_id": bob.user_id, "device_id": "EVIL", "stream_id": remote.stream_id + 1,
            "prev_id": [remote.stream_id], "deleted": False,
        }
        await a.hs.federation_transactions.on_transaction(
            "evil.example", "t1",
            {"edus": [
                {"edu_type": "m.device_list_update", "content": forged},
                {"edu_type": "m.signing_key_update",
                 "content": cross_signing_body(bob.user_id) | {"user_id": bob.user_id}},
            ]},
        )
        self.assertEqual(set((await self.cached(a, bob.user_id))[1]), {first})
        self.assertIsNone((await self.cached(a, bob.user_id))[0].master_key)
        self.assertEqual(a.hs.device_lists.current_position, position)

    async def test_remote_device_keys_are_kept_as_sent(self):
        # What a remote server sends as a device's keys is kept unchecked, as Synapse keeps
        # it (SyTest sends {"device_keys": {}}): clients check device keys, not servers.
        # Keys naming another user or device are dropped, and a device without keys is
        # still a device (held, but not in /keys/query, as with Synapse).
        a, b, alice, bob, _ = await self.setup_room()
        first = await self.device_of(bob)
        await self.track(a, alice, bob, first)
        remote, _ = await self.cached(a, bob.user_id)
        sent = {
            "PLACEHOLDER": {"device_keys": {}},
            "NOTMINE": {"user_id": bob.user_id, "device_id": "ELSE", "keys": {}},
            "NOTHIS": {"user_id": alice.user_id, "device_id": "NOTHIS", "keys": {}},
            "NOKEYS": {},
        }
        stream_id = remote.stream_id
        edus = []
        for device_id, keys in sent.items():
            edus.append({"edu_type": "m.device_list_update", "content": {
                "user_id": bob.user_id, "device_id": device_id, "stream_id": stream_id + 1,
                "prev_id": [stream_id], "keys": keys,
            }})
            stream_id += 1
        await a.hs.federation_transactions.on_transaction(b.server_name, "t1", {"edus": edus})

        async def all_held() -> bool:
            held = await self.cached(a, bob.user_id)
            return held is not None and set(held[1]) == {first, *sent}

        await self.wait_for(all_held, what="bob's new devices on A")
        devices = (await self.cached(a, bob.user_id))[1]
        self.assertEqual(devices["PLACEHOLDER"].keys, {"device_keys": {}})
        for device_id in ("NOTMINE", "NOTHIS", "NOKEYS"):
            self.assertIsNone(devices[device_id].keys)
        r = await self.user_call(alice, "POST", f"{API}/keys/query",
                                 {"device_keys": {bob.user_id: []}})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(set(r.json["device_keys"][bob.user_id]), {first, "PLACEHOLDER"})
        self.assertEqual(r.json["device_keys"][bob.user_id]["PLACEHOLDER"], {"device_keys": {}})

        # The same from a fetched list (user/devices), after an update that does not fit.
        serve = b.hs.device_lists.get_user_devices_for_federation

        async def with_placeholder(user_id: str) -> Any:
            answer = await serve(user_id)
            answer["devices"].append({"device_id": "FETCHED", "keys": {"device_keys": {}}})
            return answer

        b.hs.device_lists.get_user_devices_for_federation = with_placeholder  # type: ignore[method-assign]
        gap = {"user_id": bob.user_id, "device_id": "GAP", "stream_id": stream_id + 10,
               "prev_id": [stream_id + 5]}
        await a.hs.federation_transactions.on_transaction(
            b.server_name, "t2", {"edus": [{"edu_type": "m.device_list_update", "content": gap}]}
        )

        async def fetched() -> bool:
            held = await self.cached(a, bob.user_id)
            return held is not None and "FETCHED" in held[1]

        await self.wait_for(fetched, what="bob's list fetched again by A")
        devices = (await self.cached(a, bob.user_id))[1]
        self.assertEqual(devices["FETCHED"].keys, {"device_keys": {}})

    async def test_positions_survive_restarts(self):
        a, b, alice, bob, _ = await self.setup_room()
        await self.track(a, alice, bob, await self.device_of(bob))
        b = await self.restart_peer(b)
        bob = FedUser(bob.user_id, bob.token, b)
        position = a.hs.device_lists.current_position
        a = await self.restart_peer(a)
        alice = FedUser(alice.user_id, alice.token, a)
        # The stream resumes where it was, not below positions clients hold.
        self.assertEqual(a.hs.device_lists.current_position, position)
        fetches: list[str] = []
        fetch = a.hs.device_lists._fetch_user_devices

        async def counting(user_id: str) -> Any:
            fetches.append(user_id)
            return await fetch(user_id)

        a.hs.device_lists._fetch_user_devices = counting  # type: ignore[method-assign]
        since = await self.sync_token(alice)
        _, second = await self.second_device(bob)
        await self.wait_for_changed(alice, since, bob.user_id, "bob's new device after restarts")
        # B's EDU named the update A held before both restarts: applied, nothing fetched.
        held = await self.cached(a, bob.user_id)
        self.assertIn(second, held[1])
        self.assertFalse(held[0].stale)
        self.assertEqual(fetches, [])

    async def test_unreachable_server_is_not_asked_again_at_once(self):
        a, b, alice, bob, _ = await self.setup_room()
        await self.stop_peer(b)
        fetches: list[str] = []
        fetch = a.hs.device_lists._fetch_user_devices

        async def counting(user_id: str) -> Any:
            fetches.append(user_id)
            return await fetch(user_id)

        a.hs.device_lists._fetch_user_devices = counting  # type: ignore[method-assign]
        for _ in range(2):
            r = await self.user_call(alice, "POST", f"{API}/keys/query",
                                     {"device_keys": {bob.user_id: []}})
            self.assertEqual(r.code, 200, r)
            self.assertIn(b.server_name, r.json["failures"])
        self.assertEqual(fetches, [bob.user_id])
        self.assertIsNone(await self.cached(a, bob.user_id))

    async def test_user_devices_endpoint(self):
        a, b, alice, bob, _ = await self.setup_room()
        device_id = await self.device_of(bob)
        keys = await self.upload_keys(bob, device_id)
        r = await self.user_call(bob, "PUT", f"{API}/devices/{q(device_id)}", {"display_name": "tab"})
        self.assertEqual(r.code, 200, r)
        body = cross_signing_body(bob.user_id)
        r = await self.user_call(bob, "POST", f"{API}/keys/device_signing/upload", body)
        self.assertEqual(r.code, 200, r)
        # A device with no keys is not listed.
        await self.second_device(bob)

        client = a.hs.federation_client
        answer = await client.get_json(b.server_name, USER_DEVICES + q(bob.user_id))
        self.assertEqual(answer["user_id"], bob.user_id)
        self.assertIsInstance(answer["stream_id"], int)
        self.assertGreater(answer["stream_id"], 0)
        self.assertEqual(len(answer["devices"]), 1)
        device = answer["devices"][0]
        self.assertEqual((device["device_id"], device["device_display_name"]), (device_id, "tab"))
        self.assertEqual(device["keys"]["keys"], keys["keys"])
        self.assertEqual(answer["master_key"]["keys"], body["master_key"]["keys"])
        self.assertEqual(answer["self_signing_key"]["keys"], body["self_signing_key"]["keys"])
        self.assertNotIn("user_signing_key", answer)

        unknown = await client.get_json(b.server_name, USER_DEVICES + q(f"@nobody:{b.server_name}"))
        self.assertEqual(unknown["devices"], [])

        with self.assertRaises(HttpResponseError) as caught:
            await client.get_json(b.server_name, USER_DEVICES + q(alice.user_id))
        self.assertEqual((caught.exception.code, caught.exception.errcode), (400, "M_INVALID_PARAM"))
        with self.assertRaises(HttpResponseError) as caught:
            await client.get_json(b.server_name, USER_DEVICES + q(bob.user_id), signed=False)
        self.assertEqual((caught.exception.code, caught.exception.errcode), (401, "M_UNAUTHORIZED"))

    async def _async(self, value: Any) -> Any:
        return value
