"""Real clients on federating servers: a matrix-nio client on each of two Heddles (and on a
Heddle and a Synapse) creates, joins and talks in a room through the client API only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    InviteMemberEvent,
    JoinResponse,
    LoginResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomPreset,
    RoomPutStateResponse,
    RoomSendResponse,
    SyncResponse,
)
from twisted.internet import reactor

from tests.federation_helpers import FederationTestCase, Server
from tests.harness import PASSWORD, ensure_deferred, nio, on_both_engines
from tests.synapse_peer import SynapsePeer, ensure_stopped, require_synapse

SYNAPSE_PASSWORD = "synapse-nio-password"


class NioPeers(FederationTestCase):
    """Helpers: logged-in nio clients and a sync loop that collects what they see."""

    async def nio_login(self, base_url: str, user: str, password: str, ssl: bool | None = None
                        ) -> AsyncClient:
        client = AsyncClient(base_url, user, ssl=ssl)
        self.addCleanup(lambda: nio(client.close()))  # type: ignore[attr-defined]
        response = await nio(client.login(password, device_name="nio federation test"))
        assert isinstance(response, LoginResponse), response
        return client

    async def heddle_client(self, server: Server, localpart: str) -> AsyncClient:
        await self.fed_user(server, localpart)
        return await self.nio_login(server.base_url, localpart, PASSWORD)

    async def sync_until(self, client: AsyncClient, predicate: Any, what: str,
                         timeout: float = 60.0) -> SyncResponse:
        """Sync (long-polling briefly) until `predicate(response)` holds for a response."""
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while True:
            response = await nio(client.sync(timeout=500))
            assert isinstance(response, SyncResponse), response
            if predicate(response):
                return response
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                raise AssertionError(f"timed out waiting for {what}")

    @staticmethod
    def texts(response: SyncResponse, room_id: str) -> list[str]:
        room = response.rooms.join.get(room_id)
        if room is None:
            return []
        return [e.body for e in room.timeline.events if isinstance(e, RoomMessageText)]

    async def wait_text(self, client: AsyncClient, room_id: str, body: str, what: str) -> None:
        """Sync until `body` is seen (remembering what earlier syncs showed)."""
        seen: list[str] = []

        def found(response: SyncResponse) -> bool:
            seen.extend(self.texts(response, room_id))
            return body in seen

        await self.sync_until(client, found, what)

    async def send(self, client: AsyncClient, room_id: str, body: str) -> str:
        response = await nio(client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}
        ))
        assert isinstance(response, RoomSendResponse), response
        return str(response.event_id)


@on_both_engines
class NioOnTwoHeddles(NioPeers):
    @ensure_deferred
    async def test_create_join_by_room_id_and_talk(self) -> None:
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.heddle_client(a, "alice")
        bob = await self.heddle_client(b, "bob")
        await nio(alice.sync(timeout=0))
        await nio(bob.sync(timeout=0))
        created = await nio(alice.room_create(name="nio room", topic="over federation",
                                                preset=RoomPreset.public_chat))
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        # nio's join takes no server names: the room ID names A, which B asks.
        joined = await nio(bob.join(room_id))
        self.assertIsInstance(joined, JoinResponse, str(joined))
        self.assertEqual(joined.room_id, room_id)
        await self.sync_until(bob, lambda r: room_id in r.rooms.join, "the room in bob's sync")
        self.assertIn(room_id, bob.rooms)

        # A sees bob join (nio tracks members from the timeline/state).
        def bob_on_a(response: SyncResponse) -> bool:
            room = alice.rooms.get(room_id)
            return room is not None and bob.user_id in room.users

        await self.sync_until(alice, bob_on_a, "bob in alice's member list")
        self.assertEqual(bob.rooms[room_id].name, "nio room")
        self.assertEqual(bob.rooms[room_id].topic, "over federation")
        await self.send(alice, room_id, "hello bob, from A")
        await self.wait_text(bob, room_id, "hello bob, from A", "A's message on bob's client")
        await self.send(bob, room_id, "hello alice, from B")
        await self.wait_text(alice, room_id, "hello alice, from B", "B's message on alice's client")

    @ensure_deferred
    async def test_invite_and_join_by_alias(self) -> None:
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.heddle_client(a, "alice")
        bob = await self.heddle_client(b, "bob")
        await nio(bob.sync(timeout=0))
        created = await nio(alice.room_create(alias="nio-lobby", name="lobby",
                                                preset=RoomPreset.public_chat))
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        alias = f"#nio-lobby:{a.server_name}"
        joined = await nio(bob.join(alias))
        self.assertIsInstance(joined, JoinResponse, str(joined))
        self.assertEqual(joined.room_id, room_id)
        await self.send(bob, room_id, "joined through the alias")
        await self.wait_text(alice, room_id, "joined through the alias", "B's message on A")
        # A private room: alice invites a second user of B, who sees the invite and joins.
        carol = await self.heddle_client(b, "carol")
        await nio(carol.sync(timeout=0))
        private = await nio(alice.room_create(invite=[carol.user_id], name="private"))
        assert isinstance(private, RoomCreateResponse), private

        def invited(response: SyncResponse) -> bool:
            info = response.rooms.invite.get(private.room_id)
            return info is not None and any(
                isinstance(e, InviteMemberEvent) and e.state_key == carol.user_id
                for e in info.invite_state
            )

        await self.sync_until(carol, invited, "the invite on carol's client")
        joined = await nio(carol.join(private.room_id))
        self.assertIsInstance(joined, JoinResponse, str(joined))
        state = await nio(alice.room_put_state(private.room_id, "m.room.topic",
                                               {"topic": "set on A"}))
        self.assertIsInstance(state, RoomPutStateResponse, state)

        def topic_seen(response: SyncResponse) -> bool:
            room = carol.rooms.get(private.room_id)
            return room is not None and room.topic == "set on A"

        await self.sync_until(carol, topic_seen, "A's topic on carol's client")


@on_both_engines
class NioHeddleAndSynapse(NioPeers):
    timeout = 300

    @ensure_deferred
    async def test_nio_clients_on_heddle_and_synapse(self) -> None:
        require_synapse()
        heddle = await self.start_peer(0)
        peer = SynapsePeer(Path(self.mktemp()))  # type: ignore[attr-defined]
        self.addCleanup(ensure_stopped, peer)  # type: ignore[attr-defined]
        await peer.start()
        await peer.register_user("bob", SYNAPSE_PASSWORD)
        alice = await self.heddle_client(heddle, "alice")
        # Synapse's client API shares its TLS port; its certificate is self-signed.
        bob = await self.nio_login(peer.base_url, "bob", SYNAPSE_PASSWORD, ssl=False)
        await nio(bob.sync(timeout=0))
        created = await nio(alice.room_create(name="heddle room", alias="heddle-room",
                                              preset=RoomPreset.public_chat))
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        # Synapse does not join through the server a room ID names: join by alias.
        joined = await nio(bob.join(f"#heddle-room:{heddle.server_name}"))
        self.assertIsInstance(joined, JoinResponse, str(joined))
        await self.send(bob, room_id, "hello from synapse")
        await self.wait_text(alice, room_id, "hello from synapse", "Synapse's message on Heddle")
        await self.send(alice, room_id, "hello from heddle")
        await self.wait_text(bob, room_id, "hello from heddle", "Heddle's message on Synapse")
        # And the other way round: a room on Synapse, joined from Heddle.
        other = await nio(bob.room_create(name="synapse room", alias="synapse-room",
                                          preset=RoomPreset.public_chat))
        assert isinstance(other, RoomCreateResponse), other
        # Synapse's rooms are of version 12: their IDs name no server.
        joined = await nio(alice.join(f"#synapse-room:{peer.server_name}"))
        self.assertIsInstance(joined, JoinResponse, str(joined))
        await self.send(alice, other.room_id, "heddle in synapse's room")
        await self.wait_text(bob, other.room_id, "heddle in synapse's room",
                             "Heddle's message in Synapse's room")
