"""Real encrypting clients for the end-to-end encryption tests.

`E2eDevice` wraps one matrix-nio `AsyncClient` with encryption enabled (vodozemac, a sqlite
crypto store in the test's temp dir). Its `sync()` does what a client's sync loop does after
every /sync: send queued to-device messages, upload one-time keys when the count runs low,
query the keys of users whose device list changed, claim keys for wedged sessions. It also
remembers every timeline event it saw, retries decrypting those that arrived before their
room key, and records the users named in `device_lists`.

`E2eTestCase` (a `FederationTestCase`) builds the scenarios out of these: an encrypted room
two devices share, sending an encrypted message and waiting until the other side decrypts
it, raw authenticated requests through the client's own HTTP session (for the endpoints nio
has no helper for: cross-signing, key backup), and cross-signing keys made with signedjson.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    JoinResponse,
    KeysClaimResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
)
from nio.exceptions import EncryptionError
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from twisted.internet import reactor

from tests.federation_helpers import API, FederationTestCase, Server
from tests.harness import PASSWORD, nio

MEGOLM = "m.megolm.v1.aes-sha2"
ENCRYPTION_STATE = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": MEGOLM},
}
# How long a test waits for something that travels through sync (and federation).
WAIT = 60.0


def q(value: str) -> str:
    return quote(value, safe="")


@dataclass
class RawResponse:
    code: int
    json: Any

    def __repr__(self) -> str:
        return f"<RawResponse {self.code} {json.dumps(self.json)[:600]}>"


@dataclass
class E2eDevice:
    """One logged-in nio client with encryption, and what its syncs have shown."""

    client: AsyncClient
    label: str
    password: str
    # event_id -> (room_id, event): decrypted events replace undecrypted ones when the room
    # key shows up later.
    seen: dict[str, tuple[str, Any]] = field(default_factory=dict)
    # Events whose first delivery could not be decrypted (the key came later, or never).
    first_undecrypted: set[str] = field(default_factory=set)
    # Users named in device_lists.changed / .left, in the order the syncs named them.
    changed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    # device_one_time_keys_count.signed_curve25519 per sync (None when absent).
    otk_counts: list[int | None] = field(default_factory=list)
    # The to-device events the syncs delivered (nio class names, after Olm decryption).
    to_device: list[str] = field(default_factory=list)
    last_upload: KeysUploadResponse | None = None

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @property
    def localpart(self) -> str:
        return self.user_id[1:].split(":", 1)[0]

    def __str__(self) -> str:
        return f"{self.label} ({self.user_id} {self.device_id})"

    # ----- the sync loop ------------------------------------------------------------------

    async def sync(self, timeout_ms: int = 500) -> SyncResponse:
        client = self.client
        response = await nio(client.sync(timeout=timeout_ms))
        assert isinstance(response, SyncResponse), f"{self}: /sync failed: {response}"
        for room_id, info in response.rooms.join.items():
            for event in info.timeline.events:
                event_id = getattr(event, "event_id", None)
                if event_id is None:
                    continue
                if isinstance(event, MegolmEvent) and event_id not in self.seen:
                    self.first_undecrypted.add(event_id)
                self.seen[event_id] = (room_id, event)
        self.to_device.extend(type(e).__name__ for e in response.to_device_events)
        self.changed.extend(response.device_list.changed)
        self.left.extend(response.device_list.left)
        self.otk_counts.append(response.device_key_count.signed_curve25519)
        self._retry_decryption()
        await self.after_sync()
        return response

    def _retry_decryption(self) -> None:
        """What clients do when a room key arrives after its messages."""
        for event_id, (room_id, event) in list(self.seen.items()):
            if not isinstance(event, MegolmEvent):
                continue
            event.room_id = room_id
            try:
                decrypted = self.client.decrypt_event(event)
            except EncryptionError:
                continue
            self.seen[event_id] = (room_id, decrypted)

    async def after_sync(self) -> None:
        """The key maintenance nio's `sync_forever` does after each sync, checked."""
        client = self.client
        if client.outgoing_to_device_messages:
            for r in await nio(client.send_to_device_messages()):
                assert not getattr(r, "status_code", None), f"{self}: sendToDevice failed: {r}"
        if client.should_upload_keys:
            await self.upload_keys()
        if client.should_query_keys:
            queried = await nio(client.keys_query())
            assert isinstance(queried, KeysQueryResponse), f"{self}: keys/query failed: {queried}"
        if client.should_claim_keys:
            claimed = await nio(client.keys_claim(client.get_users_for_key_claiming()))
            assert isinstance(claimed, KeysClaimResponse), f"{self}: keys/claim failed: {claimed}"

    async def upload_keys(self) -> KeysUploadResponse:
        uploaded = await nio(self.client.keys_upload())
        assert isinstance(uploaded, KeysUploadResponse), f"{self}: keys/upload failed: {uploaded}"
        self.last_upload = uploaded
        return uploaded

    async def sync_until(
        self, predicate: Callable[[], Any], what: str, timeout: float = WAIT
    ) -> Any:
        """Sync (long-polling briefly) until `predicate()` is truthy."""
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined,misc]
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() > deadline:  # type: ignore[attr-defined,misc]
                raise AssertionError(f"{self}: timed out waiting for {what}")
            await self.sync()

    # ----- what the client knows ----------------------------------------------------------

    def known_devices(self, user_id: str) -> set[str]:
        """The devices of `user_id` this client would share room keys with."""
        return {d.id for d in self.client.device_store.active_user_devices(user_id)}

    def joined(self, room_id: str, user_id: str) -> bool:
        room = self.client.rooms.get(room_id)
        if room is None or user_id not in room.users:
            return False
        return not room.users[user_id].invited

    def changed_since(self, mark: int) -> list[str]:
        return self.changed[mark:]

    # ----- raw requests through the client's own HTTP session -----------------------------

    async def raw(self, method: str, path: str, body: Any = None) -> RawResponse:
        """An authenticated request (path from `/_matrix/...`) on nio's aiohttp session."""
        client = self.client
        headers = {"Authorization": f"Bearer {client.access_token}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        response = await nio(client.send(method, path, data, headers))
        try:
            text = await nio(response.text())
        finally:
            response.release()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = {"non_json_body": text[:500]}
        return RawResponse(response.status, parsed)

    async def query_keys(self, *user_ids: str) -> dict[str, Any]:
        r = await self.raw("POST", f"{API}/keys/query", {"device_keys": {u: [] for u in user_ids}})
        assert r.code == 200, f"{self}: POST /keys/query for {user_ids}: {r}"
        assert isinstance(r.json, dict), r
        return r.json


# ----- cross-signing keys ------------------------------------------------------------------


@dataclass
class CrossSigningKey:
    """An ed25519 cross-signing key pair; its key ID is `ed25519:<public key>`."""

    user_id: str
    usage: str
    signing_key: Any
    public: str

    @classmethod
    def generate(cls, user_id: str, usage: str) -> CrossSigningKey:
        key = generate_signing_key("pending")
        public = encode_verify_key_base64(get_verify_key(key))
        key.version = public  # sign_json names the key `ed25519:<version>`
        return cls(user_id, usage, key, public)

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public}"

    def unsigned_body(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "usage": [self.usage], "keys": {self.key_id: self.public}}

    def body(self, signed_by: CrossSigningKey | None = None) -> dict[str, Any]:
        body = self.unsigned_body()
        return signed_by.sign(body) if signed_by is not None else body

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of `obj` with this key's signature added (unsigned and other signatures
        are kept, as the signed-JSON rules allow)."""
        return dict(sign_json(copy.deepcopy(obj), self.user_id, self.signing_key))

    def verifies(self, obj: dict[str, Any]) -> bool:
        verify_key = get_verify_key(self.signing_key)
        try:
            verify_signed_json(obj, self.user_id, verify_key)
        except SignatureVerifyException:
            return False
        return True


@dataclass
class CrossSigningKeys:
    master: CrossSigningKey
    self_signing: CrossSigningKey
    user_signing: CrossSigningKey

    @classmethod
    def generate(cls, user_id: str) -> CrossSigningKeys:
        return cls(
            CrossSigningKey.generate(user_id, "master"),
            CrossSigningKey.generate(user_id, "self_signing"),
            CrossSigningKey.generate(user_id, "user_signing"),
        )

    def upload_body(self) -> dict[str, Any]:
        return {
            "master_key": self.master.body(),
            "self_signing_key": self.self_signing.body(signed_by=self.master),
            "user_signing_key": self.user_signing.body(signed_by=self.master),
        }


def strip_unsigned(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "unsigned"}


# ----- the test case -----------------------------------------------------------------------


@dataclass
class Site:
    """Where clients log in: a Heddle test server or a Synapse peer."""

    name: str
    base_url: str
    # False for Synapse, whose client API shares its TLS port (self-signed certificate).
    ssl: bool | None
    # Creates an account for a localpart; returns its password.
    create_account: Callable[[str], Awaitable[str]]


class E2eTestCase(FederationTestCase):
    """Mixin: servers come from `start_peer`; clients are `E2eDevice`s."""

    timeout = 300

    def setUp(self) -> Any:
        self._passwords: dict[tuple[str, str], str] = {}
        return super().setUp()

    def heddle_site(self, server: Server) -> Site:
        async def create_account(localpart: str) -> str:
            # No session: the user's devices come from the nio logins only.
            r = await self.call(
                server, "POST", f"{API}/register",
                {"username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"},
                 "inhibit_login": True},
            )
            assert r.code == 200, r
            return PASSWORD

        return Site(f"Heddle {server.server_name}", server.base_url, None, create_account)

    def synapse_site(self, peer: Any, password: str) -> Site:
        async def create_account(localpart: str) -> str:
            await peer.register_user(localpart, password)
            return password

        return Site(f"Synapse {peer.server_name}", peer.base_url, False, create_account)

    async def device(
        self, site: Site, localpart: str, label: str, new_account: bool = True
    ) -> E2eDevice:
        """Log in a new device with encryption enabled (creating the account first unless
        `new_account` is false) and upload its device and one-time keys."""
        password = self._passwords.get((site.base_url, localpart))
        if new_account or password is None:
            password = await site.create_account(localpart)
            self._passwords[(site.base_url, localpart)] = password
        store = Path(self.mktemp())  # type: ignore[attr-defined]
        store.mkdir(parents=True)
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = AsyncClient(site.base_url, localpart, store_path=str(store), config=config,
                             ssl=site.ssl)
        self.addCleanup(lambda: nio(client.close()))  # type: ignore[attr-defined]
        response = await nio(client.login(password, device_name=label))
        assert isinstance(response, LoginResponse), f"{label}: login failed: {response}"
        assert client.olm is not None, f"{label}: nio has no Olm machine (is [e2e] installed?)"
        device = E2eDevice(client, f"{label} on {site.name}", password)
        uploaded = await device.upload_keys()
        assert uploaded.signed_curve25519_count > 0, f"{device}: no one-time keys counted"
        return device

    # ----- rooms and messages -------------------------------------------------------------

    async def encrypted_room(self, alice: E2eDevice, bob: E2eDevice) -> str:
        """Alice creates a private room with m.room.encryption in its initial state and
        invites bob; bob joins; both see the other joined and know the other's device."""
        await alice.sync(0)
        await bob.sync(0)
        created = await nio(alice.client.room_create(
            name="encrypted", invite=[bob.user_id], preset=RoomPreset.private_chat,
            initial_state=[ENCRYPTION_STATE],
        ))
        assert isinstance(created, RoomCreateResponse), f"{alice}: createRoom failed: {created}"
        room_id = str(created.room_id)
        await bob.sync_until(lambda: room_id in bob.client.invited_rooms, "alice's invite")
        joined = await nio(bob.client.join(room_id))
        assert isinstance(joined, JoinResponse), f"{bob}: join failed: {joined}"

        def bob_ready() -> bool:
            room = bob.client.rooms.get(room_id)
            return (room is not None and room.encrypted and bob.joined(room_id, alice.user_id)
                    and alice.device_id in bob.known_devices(alice.user_id))

        def alice_ready() -> bool:
            room = alice.client.rooms.get(room_id)
            return (room is not None and room.encrypted and alice.joined(room_id, bob.user_id)
                    and bob.device_id in alice.known_devices(bob.user_id))

        await bob.sync_until(bob_ready, "the encrypted room, alice joined, and alice's device")
        await alice.sync_until(alice_ready, "bob joined, and bob's device from keys/query")
        return room_id

    async def send_encrypted(self, sender: E2eDevice, room_id: str, body: str) -> str:
        """Send a text message (nio encrypts it, sharing the room key first) and check the
        server holds only ciphertext."""
        response = await nio(sender.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True,
        ))
        assert isinstance(response, RoomSendResponse), f"{sender}: send failed: {response}"
        event_id = str(response.event_id)
        stored = await sender.raw("GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}")
        assert stored.code == 200, f"GET the sent event: {stored}"
        assert stored.json["type"] == "m.room.encrypted", stored
        assert stored.json["content"]["algorithm"] == MEGOLM, stored
        assert body not in json.dumps(stored.json), "the server holds the plaintext"
        return event_id

    async def wait_decrypted(
        self, receiver: E2eDevice, room_id: str, event_id: str, body: str, sender: E2eDevice,
        strict: bool,
    ) -> None:
        """Sync until `event_id` is a decrypted RoomMessageText with `body`.

        `strict`: the room key must have arrived no later than the message (in the same or
        an earlier sync), as it does on one server, where the sender's to-device messages
        are stored before its event. Over federation the EDU and the PDU travel separately,
        so there the key may come a sync later (clients retry then, as `E2eDevice` does).
        """

        def decrypted() -> bool:
            entry = receiver.seen.get(event_id)
            return entry is not None and isinstance(entry[1], RoomMessageText)

        try:
            await receiver.sync_until(decrypted, f"{sender}'s message {event_id} decrypted")
        except AssertionError as e:
            entry = receiver.seen.get(event_id)
            state = ("never delivered" if entry is None
                     else f"delivered but still {type(entry[1]).__name__} (unable to decrypt)")
            raise AssertionError(
                f"{e}: the event was {state}; to-device events received: {receiver.to_device}"
            ) from None
        seen_room, event = receiver.seen[event_id]
        self.assertEqual(seen_room, room_id)  # type: ignore[attr-defined]
        self.assertEqual(event.body, body)  # type: ignore[attr-defined]
        self.assertEqual(event.sender, sender.user_id)  # type: ignore[attr-defined]
        self.assertTrue(event.decrypted, "the text arrived unencrypted")  # type: ignore[attr-defined]
        if strict:
            self.assertNotIn(  # type: ignore[attr-defined]
                event_id, receiver.first_undecrypted,
                f"{receiver} got {event_id} before its room key (a MegolmEvent it could not "
                "decrypt): the to-device m.room_key was not in the same or an earlier sync",
            )

    async def exchange(
        self, alice: E2eDevice, bob: E2eDevice, room_id: str, strict: bool, tag: str = ""
    ) -> tuple[str, str]:
        """Each sends one message; each decrypts the other's."""
        to_bob = f"hello bob, encrypted{tag}"
        first = await self.send_encrypted(alice, room_id, to_bob)
        await self.wait_decrypted(bob, room_id, first, to_bob, alice, strict)
        to_alice = f"hello alice, encrypted{tag}"
        second = await self.send_encrypted(bob, room_id, to_alice)
        await self.wait_decrypted(alice, room_id, second, to_alice, bob, strict)
        return first, second

    # ----- devices ------------------------------------------------------------------------

    async def delete_device(self, by: E2eDevice, device_id: str) -> None:
        """Delete one of by's user's devices through /delete_devices with password UIA."""
        challenge = await nio(by.client.delete_devices([device_id]))
        assert isinstance(challenge, DeleteDevicesAuthResponse), challenge
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": by.localpart},
            "password": by.password,
            "session": challenge.session,
        }
        done = await nio(by.client.delete_devices([device_id], auth))
        assert isinstance(done, DeleteDevicesResponse), f"{by}: delete_devices failed: {done}"

    # ----- cross-signing ------------------------------------------------------------------

    async def upload_cross_signing(
        self, device: E2eDevice, body: dict[str, Any], with_password: bool = False
    ) -> RawResponse:
        """POST /keys/device_signing/upload; `with_password` runs the UIA round first."""
        path = f"{API}/keys/device_signing/upload"
        if not with_password:
            return await device.raw("POST", path, body)
        challenge = await device.raw("POST", path, body)
        assert challenge.code == 401, f"re-upload without auth must need UIA: {challenge}"
        flows = [f["stages"] for f in challenge.json.get("flows", [])]
        assert ["m.login.password"] in flows, challenge
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": device.localpart},
            "password": device.password,
            "session": challenge.json["session"],
        }
        return await device.raw("POST", path, {**body, "auth": auth})

    async def upload_signatures(self, device: E2eDevice, body: dict[str, Any]) -> None:
        r = await device.raw("POST", f"{API}/keys/signatures/upload", body)
        assert r.code == 200, f"{device}: POST /keys/signatures/upload: {r}"
        self.assertEqual(r.json.get("failures", {}), {}, r)  # type: ignore[attr-defined]
