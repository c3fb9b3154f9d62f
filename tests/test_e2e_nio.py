"""End-to-end encryption with real clients: matrix-nio with encryption enabled (vodozemac).

The clients do what Element does with an encrypted room: upload device and one-time keys,
query the other side's devices (following `device_lists` in /sync), claim one-time keys,
share the Megolm room key over Olm-encrypted to-device messages, and decrypt what arrives.
The server never sees plaintext; it must store and deliver all the keys exactly right, or a
message stays undecryptable (a `MegolmEvent` in nio instead of a `RoomMessageText`).

Scenarios, on one Heddle, on two federating Heddles, and on a Heddle with a Synapse:
messages both ways; a second device of a user joining (its keys reach the other side) and a
device being deleted (it disappears from the other side's keys/query); cross-signing keys
and signatures; key backup of a real Megolm session, restored on a new device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import vodozemac
from nio import Event, MegolmEvent, RoomMessageText
from nio.crypto.key_export import encrypt_and_save
from nio.exceptions import EncryptionError
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from tests.e2e_helpers import (
    MEGOLM,
    WAIT,
    CrossSigningKey,
    CrossSigningKeys,
    E2eTestCase,
    Site,
    q,
    strip_unsigned,
)
from tests.federation_helpers import API
from tests.harness import ensure_deferred, nio, on_both_engines
from tests.synapse_peer import SynapsePeer, ensure_stopped, require_synapse

BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
SYNAPSE_PASSWORD = "synapse-e2e-password"


def device_self_signature_ok(device_keys: dict[str, Any]) -> bool:
    """The device's own ed25519 signature on its keys still verifies."""
    user_id, device_id = device_keys["user_id"], device_keys["device_id"]
    verify_key = decode_verify_key_bytes(
        f"ed25519:{device_id}", decode_base64(device_keys["keys"][f"ed25519:{device_id}"])
    )
    try:
        verify_signed_json(device_keys, user_id, verify_key)
    except SignatureVerifyException:
        return False
    return True


class Scenarios(E2eTestCase):
    """Each scenario takes alice's server and bob's (the same one, or two federating)."""

    async def heddle(self, slot: int = 0) -> Site:
        return self.heddle_site(await self.start_peer(slot))

    async def synapse(self) -> Site:
        require_synapse()
        peer = SynapsePeer(Path(self.mktemp()))
        self.addCleanup(ensure_stopped, peer)
        await peer.start()
        return self.synapse_site(peer, SYNAPSE_PASSWORD)

    async def scenario_messages(self, a: Site, b: Site, strict: bool) -> None:
        alice = await self.device(a, "alice", "alice's laptop")
        bob = await self.device(b, "bob", "bob's laptop")
        # The server counts the one-time keys each device uploaded.
        for device in (alice, bob):
            await device.sync(0)
            assert device.last_upload is not None
            uploaded = device.last_upload.signed_curve25519_count
            self.assertIn(uploaded, device.otk_counts,
                          f"{device}: /sync's device_one_time_keys_count.signed_curve25519 "
                          f"{device.otk_counts} lacks the {uploaded} keys/upload counted")
        room_id = await self.encrypted_room(alice, bob)
        await self.exchange(alice, bob, room_id, strict)
        # A second round reuses the Olm sessions and the shared Megolm sessions.
        await self.exchange(alice, bob, room_id, strict, tag=" again")

    async def scenario_new_and_deleted_device(self, a: Site, b: Site, strict: bool) -> None:
        alice = await self.device(a, "alice", "alice's laptop")
        bob = await self.device(b, "bob", "bob's laptop")
        room_id = await self.encrypted_room(alice, bob)
        await self.exchange(alice, bob, room_id, strict)

        # Bob logs in on a phone. Alice's client must learn of it (bob in her sync's
        # device_lists.changed, then keys/query) before her next message.
        await alice.sync(0)
        mark = len(alice.changed)
        phone = await self.device(b, "bob", "bob's phone", new_account=False)

        def phone_ready() -> bool:
            room = phone.client.rooms.get(room_id)
            return (room is not None and room.encrypted
                    and alice.device_id in phone.known_devices(alice.user_id))

        await phone.sync_until(phone_ready, "the encrypted room and alice's device")
        try:
            await alice.sync_until(lambda: phone.device_id in alice.known_devices(bob.user_id),
                                   "bob's new device")
        except AssertionError as e:
            raise AssertionError(
                f"{e}; device_lists.changed since the login: {alice.changed_since(mark)}"
            ) from None
        self.assertIn(bob.user_id, alice.changed_since(mark))
        view = await alice.query_keys(bob.user_id)
        self.assertEqual(set(view["device_keys"][bob.user_id]), {bob.device_id, phone.device_id})
        if a is b:
            # (Over federation, servers may keep device names to themselves.)
            self.assertEqual(
                view["device_keys"][bob.user_id][phone.device_id]["unsigned"].get(
                    "device_display_name"), "bob's phone", view,
            )

        to_both = "for both of bob's devices"
        event_id = await self.send_encrypted(alice, room_id, to_both)
        await self.wait_decrypted(phone, room_id, event_id, to_both, alice, strict)
        await self.wait_decrypted(bob, room_id, event_id, to_both, alice, strict)
        from_phone = "from bob's phone"
        # The phone shares its room key with alice's device and bob's laptop.
        await bob.sync_until(lambda: phone.device_id in bob.known_devices(bob.user_id),
                             "bob's laptop learning of the phone")
        event_id = await self.send_encrypted(phone, room_id, from_phone)
        await self.wait_decrypted(alice, room_id, event_id, from_phone, phone, strict)
        await self.wait_decrypted(bob, room_id, event_id, from_phone, phone, strict)

        # Bob deletes the phone: alice's client is told, and keys/query no longer has it.
        await alice.sync(0)
        mark = len(alice.changed)
        await self.delete_device(bob, phone.device_id)
        try:
            await alice.sync_until(
                lambda: phone.device_id not in alice.known_devices(bob.user_id),
                "bob's deleted device to go",
            )
        except AssertionError as e:
            raise AssertionError(
                f"{e}; device_lists.changed since the deletion: {alice.changed_since(mark)}"
            ) from None
        self.assertIn(bob.user_id, alice.changed_since(mark))
        view = await alice.query_keys(bob.user_id)
        self.assertEqual(set(view["device_keys"][bob.user_id]), {bob.device_id}, view)
        after = "after the phone was deleted"
        event_id = await self.send_encrypted(alice, room_id, after)
        await self.wait_decrypted(bob, room_id, event_id, after, alice, strict)

    async def scenario_cross_signing(self, a: Site, b: Site, strict: bool) -> None:
        alice = await self.device(a, "alice", "alice's laptop")
        bob = await self.device(b, "bob", "bob's laptop")
        # Sharing an encrypted room makes alice's key changes show up in bob's sync.
        room_id = await self.encrypted_room(alice, bob)
        keys = CrossSigningKeys.generate(alice.user_id)
        body = keys.upload_body()

        # The first upload needs no UIA; the same keys again need none either (spec 1.11).
        await bob.sync(0)
        mark = len(bob.changed)
        r = await self.upload_cross_signing(alice, body)
        self.assertEqual(r.code, 200, r)
        r = await self.upload_cross_signing(alice, body)
        self.assertEqual(r.code, 200, f"an identical re-upload needs no UIA: {r}")
        own = await alice.query_keys(alice.user_id)
        self.assertEqual(own["master_keys"][alice.user_id], body["master_key"], own)
        self.assertEqual(own["self_signing_keys"][alice.user_id], body["self_signing_key"], own)
        self.assertEqual(own["user_signing_keys"][alice.user_id], body["user_signing_key"], own)
        await bob.sync_until(lambda: alice.user_id in bob.changed_since(mark),
                             "alice in device_lists.changed after her cross-signing upload")

        async def bob_sees_master() -> Any:
            view = await bob.query_keys(alice.user_id)
            master = view.get("master_keys", {}).get(alice.user_id)
            return view if master == body["master_key"] else None

        view = await self.wait_for(bob_sees_master, WAIT, "alice's master key in bob's query")
        self.assertEqual(view["self_signing_keys"][alice.user_id], body["self_signing_key"])
        # The user-signing key is only ever shown to its owner.
        self.assertNotIn(alice.user_id, view.get("user_signing_keys", {}), view)

        # A new self-signing key replaces one: that needs UIA (password).
        new_ssk = CrossSigningKey.generate(alice.user_id, "self_signing")
        r = await self.upload_cross_signing(
            alice, {"self_signing_key": new_ssk.body(signed_by=keys.master)}, with_password=True
        )
        self.assertEqual(r.code, 200, r)
        keys.self_signing = new_ssk
        own = await alice.query_keys(alice.user_id)
        self.assertEqual(own["self_signing_keys"][alice.user_id]["keys"],
                         {new_ssk.key_id: new_ssk.public}, own)

        # Alice signs her device with the self-signing key; bob sees the signature.
        device_keys = own["device_keys"][alice.user_id][alice.device_id]
        await bob.sync(0)
        mark = len(bob.changed)
        await self.upload_signatures(alice, {
            alice.user_id: {alice.device_id: new_ssk.sign(strip_unsigned(device_keys))},
        })
        await bob.sync_until(lambda: alice.user_id in bob.changed_since(mark),
                             "alice in device_lists.changed after signing her device")

        async def bob_sees_device_signature() -> Any:
            view = await bob.query_keys(alice.user_id)
            seen = view.get("device_keys", {}).get(alice.user_id, {}).get(alice.device_id)
            if seen and new_ssk.key_id in seen.get("signatures", {}).get(alice.user_id, {}):
                return view
            return None

        view = await self.wait_for(bob_sees_device_signature, WAIT,
                                   "the self-signing signature on alice's device, for bob")
        seen = view["device_keys"][alice.user_id][alice.device_id]
        self.assertTrue(new_ssk.verifies(seen), seen)
        self.assertTrue(device_self_signature_ok(seen), seen)
        self.assertEqual(view["self_signing_keys"][alice.user_id]["keys"],
                         {new_ssk.key_id: new_ssk.public}, view)
        self.assertEqual(view["master_keys"][alice.user_id], body["master_key"], view)

        # Bob gets cross-signing keys; alice verifies him: her user-signing key signs his
        # master key. Only alice sees that signature.
        bob_keys = CrossSigningKeys.generate(bob.user_id)
        r = await self.upload_cross_signing(bob, bob_keys.upload_body())
        self.assertEqual(r.code, 200, r)
        bob_master = bob_keys.master.body()

        async def alice_sees_bob_master() -> Any:
            view = await alice.query_keys(bob.user_id)
            return view if view.get("master_keys", {}).get(bob.user_id) == bob_master else None

        await self.wait_for(alice_sees_bob_master, WAIT, "bob's master key in alice's query")
        await self.upload_signatures(alice, {
            bob.user_id: {bob_keys.master.public: keys.user_signing.sign(bob_master)},
        })
        mine = await alice.query_keys(bob.user_id)
        signed_master = mine["master_keys"][bob.user_id]
        self.assertIn(keys.user_signing.key_id,
                      signed_master.get("signatures", {}).get(alice.user_id, {}), mine)
        self.assertTrue(keys.user_signing.verifies(signed_master), signed_master)
        theirs = await bob.query_keys(bob.user_id)
        self.assertNotIn(alice.user_id,
                         theirs["master_keys"][bob.user_id].get("signatures", {}), theirs)
        # None of this got in the way of the encrypted conversation.
        await self.exchange(alice, bob, room_id, strict, tag=" (cross-signed)")

    async def scenario_key_backup(self, server: Site) -> None:
        alice = await self.device(server, "alice", "alice's laptop")
        bob = await self.device(server, "bob", "bob's laptop")
        room_id = await self.encrypted_room(alice, bob)
        secret = "history worth backing up"
        event_id = await self.send_encrypted(alice, room_id, secret)
        await self.wait_decrypted(bob, room_id, event_id, secret, alice, strict=True)
        raw_event = (await bob.raw("GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}")).json
        session_id = raw_event["content"]["session_id"]
        assert bob.client.olm is not None
        session = bob.client.olm.inbound_group_store.get(
            room_id, raw_event["content"]["sender_key"], session_id
        )
        self.assertIsNotNone(session, "bob's client holds no inbound session for the message")

        # A backup version with a fresh curve25519 backup key, signed by bob's device.
        backup_key = vodozemac.PkDecryption()
        auth_data: dict[str, Any] = {"public_key": backup_key.public_key.to_base64()}
        auth_data["signatures"] = {
            bob.user_id: {f"ed25519:{bob.device_id}": bob.client.olm.sign_json(auth_data)}
        }
        r = await bob.raw("POST", f"{API}/room_keys/version",
                          {"algorithm": BACKUP_ALGORITHM, "auth_data": auth_data})
        self.assertEqual(r.code, 200, r)
        version = r.json["version"]
        self.assertIsInstance(version, str)
        r = await bob.raw("GET", f"{API}/room_keys/version")
        self.assertEqual(r.code, 200, r)
        self.assertEqual((r.json["version"], r.json["algorithm"], r.json["auth_data"],
                          r.json["count"]), (version, BACKUP_ALGORITHM, auth_data, 0), r)
        empty_etag = r.json["etag"]
        self.assertIsInstance(empty_etag, str)

        # Back up the session as the spec's algorithm says: the session export, encrypted
        # to the backup key (vodozemac's libolm-compatible PkEncryption).
        backed_up = {
            "algorithm": MEGOLM,
            "sender_key": session.sender_key,
            "session_key": session.export_session(session.first_known_index),
            "sender_claimed_keys": {"ed25519": session.ed25519},
            "forwarding_curve25519_key_chain": session.forwarding_chain,
        }
        encryption = vodozemac.PkEncryption.from_key(
            vodozemac.Curve25519PublicKey.from_base64(auth_data["public_key"])
        )
        ephemeral, mac, ciphertext = encryption.encrypt(json.dumps(backed_up).encode()).to_base64()
        key_data = {
            "first_message_index": session.first_known_index,
            "forwarded_count": 0,
            "is_verified": False,
            "session_data": {"ephemeral": ephemeral, "ciphertext": ciphertext, "mac": mac},
        }
        session_path = f"{API}/room_keys/keys/{q(room_id)}/{q(session_id)}"
        r = await bob.raw("PUT", f"{session_path}?version={q(version)}", key_data)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["count"], 1, r)
        self.assertNotEqual(r.json["etag"], empty_etag, r)
        etag = r.json["etag"]
        r = await bob.raw("GET", f"{session_path}?version={q(version)}")
        self.assertEqual((r.code, r.json), (200, key_data))
        r = await bob.raw("GET", f"{API}/room_keys/version")
        self.assertEqual((r.json["count"], r.json["etag"]), (1, etag), r)

        # A new device of bob's never got the room key...
        phone = await self.device(server, "bob", "bob's new phone", new_account=False)
        await phone.sync_until(lambda: room_id in phone.client.rooms, "the room on the phone")
        history = await phone.raw(
            "GET", f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=50"
        )
        self.assertEqual(history.code, 200, history)
        [raw_message] = [e for e in history.json["chunk"] if e["event_id"] == event_id]
        encrypted = Event.parse_event(raw_message)
        assert isinstance(encrypted, MegolmEvent), encrypted
        encrypted.room_id = room_id
        with self.assertRaises(EncryptionError):
            phone.client.decrypt_event(encrypted)
        # ...until it restores the backup: fetch, decrypt with the backup key, import.
        r = await phone.raw("GET", f"{API}/room_keys/keys?version={q(version)}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"rooms": {room_id: {"sessions": {session_id: key_data}}}})
        stored = r.json["rooms"][room_id]["sessions"][session_id]["session_data"]
        restored = json.loads(backup_key.decrypt(vodozemac.Message.from_base64(
            stored["ciphertext"], stored["mac"], stored["ephemeral"]
        )))
        self.assertEqual(restored, backed_up)
        export = Path(self.mktemp())
        encrypt_and_save(
            json.dumps([{**restored, "room_id": room_id, "session_id": session_id}]).encode(),
            str(export), "restore passphrase", count=1000,
        )
        await nio(phone.client.import_keys(str(export), "restore passphrase"))
        decrypted = phone.client.decrypt_event(encrypted)
        assert isinstance(decrypted, RoomMessageText), decrypted
        self.assertEqual(decrypted.body, secret)

        # A newer backup version replaces the old as the current one: writes to the old one
        # are refused with the current version named; the old one can still be read.
        r = await bob.raw("POST", f"{API}/room_keys/version",
                          {"algorithm": BACKUP_ALGORITHM, "auth_data": auth_data})
        self.assertEqual(r.code, 200, r)
        newer = r.json["version"]
        self.assertNotEqual(newer, version)
        r = await bob.raw("PUT", f"{session_path}?version={q(version)}", key_data)
        self.assertEqual((r.code, r.json.get("errcode")), (403, "M_WRONG_ROOM_KEYS_VERSION"), r)
        self.assertEqual(r.json.get("current_version"), newer, r)
        r = await bob.raw("GET", f"{API}/room_keys/version")
        self.assertEqual((r.json["version"], r.json["count"]), (newer, 0), r)
        r = await bob.raw("GET", f"{API}/room_keys/version/{q(version)}")
        self.assertEqual((r.code, r.json.get("count")), (200, 1), r)
        r = await bob.raw("GET", f"{API}/room_keys/keys?version={q(newer)}")
        self.assertEqual((r.code, r.json), (200, {"rooms": {}}))
        r = await bob.raw("GET", f"{API}/room_keys/version/999999")
        self.assertEqual((r.code, r.json.get("errcode")), (404, "M_NOT_FOUND"), r)


@on_both_engines
class E2eOnOneHeddle(Scenarios):
    @ensure_deferred
    async def test_encrypted_messages_both_ways(self) -> None:
        server = await self.heddle()
        await self.scenario_messages(server, server, strict=True)

    @ensure_deferred
    async def test_new_device_gets_keys_and_deleted_device_disappears(self) -> None:
        server = await self.heddle()
        await self.scenario_new_and_deleted_device(server, server, strict=True)

    @ensure_deferred
    async def test_cross_signing_keys_and_signatures(self) -> None:
        server = await self.heddle()
        await self.scenario_cross_signing(server, server, strict=True)

    @ensure_deferred
    async def test_key_backup_restores_history_on_a_new_device(self) -> None:
        await self.scenario_key_backup(await self.heddle())


@on_both_engines
class E2eOnTwoHeddles(Scenarios):
    @ensure_deferred
    async def test_encrypted_messages_both_ways_over_federation(self) -> None:
        await self.scenario_messages(await self.heddle(0), await self.heddle(1), strict=False)

    @ensure_deferred
    async def test_new_and_deleted_devices_over_federation(self) -> None:
        await self.scenario_new_and_deleted_device(
            await self.heddle(0), await self.heddle(1), strict=False
        )

    @ensure_deferred
    async def test_cross_signing_over_federation(self) -> None:
        await self.scenario_cross_signing(await self.heddle(0), await self.heddle(1), strict=False)


@on_both_engines
class E2eHeddleAndSynapse(Scenarios):
    """Alice on Heddle, bob on a real Synapse (skipped without one, see synapse_peer)."""

    timeout = 400

    @ensure_deferred
    async def test_encrypted_messages_with_synapse(self) -> None:
        require_synapse()
        await self.scenario_messages(await self.heddle(), await self.synapse(), strict=False)

    @ensure_deferred
    async def test_new_and_deleted_devices_with_synapse(self) -> None:
        require_synapse()
        await self.scenario_new_and_deleted_device(
            await self.heddle(), await self.synapse(), strict=False
        )

    @ensure_deferred
    async def test_cross_signing_with_synapse(self) -> None:
        require_synapse()
        await self.scenario_cross_signing(await self.heddle(), await self.synapse(), strict=False)
