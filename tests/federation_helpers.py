"""Several Heddle servers federating on loopback, for federation tests.

Each server is named `127.0.0.1:<port>` (an IP literal with a port, so discovery needs no
DNS), serves federation over TLS with a self-signed certificate on that port, and trusts
its peers' certificates and loopback addresses (`verify_tls: false`, loopback allowed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task

from homeserver.app import HomeServer
from homeserver.tls import generate_self_signed_certificate
from tests.harness import PASSWORD, HomeserverTestCase, Response, isolate_from_dns, make_config
from tests.synapse_peer import free_port

API = "/_matrix/client/v3"


def q(value: str) -> str:
    return quote(value, safe="")


def peer_federation_config() -> dict[str, Any]:
    return {
        "verify_tls": False,
        "ip_range_allowlist": ["127.0.0.0/8"],
        "retry_min_interval_ms": 200,
        "retry_max_interval_ms": 2000,
        "request_timeout_ms": 20000,
    }


@dataclass
class Server:
    hs: HomeServer
    server_name: str
    base_url: str
    data_dir: Path
    slot: int
    port: int


@dataclass
class FedUser:
    user_id: str
    token: str
    server: Server


class FederationTestCase(HomeserverTestCase):
    """Mixin: no default server; `start_peer(slot)` starts federating ones."""

    timeout = 240

    def setUp(self) -> Any:
        self.servers: list[Server] = []
        return None

    async def start_peer(
        self, slot: int, port: int | None = None, data_dir: Path | None = None, **overrides: Any
    ) -> Server:
        port = port or free_port()
        server_name = f"127.0.0.1:{port}"
        fresh = data_dir is None
        # A restart reuses the first start's directory, removed when the test ends.
        data_dir = data_dir or self.make_data_dir(prefix=f"heddle-fed-{slot}-")
        cert, key = data_dir / "tls.crt", data_dir / "tls.key"
        if not cert.exists():
            generate_self_signed_certificate(cert, key, "127.0.0.1")
        raw = {
            "server_name": server_name,
            "listeners": [
                {"type": "client", "bind_address": "127.0.0.1", "port": 0},
                {
                    "type": "federation",
                    "bind_address": "127.0.0.1",
                    "port": port,
                    "tls": True,
                    "tls_certificate_path": str(cert),
                    "tls_private_key_path": str(key),
                },
            ],
            "federation": peer_federation_config(),
            **overrides,
        }
        config = make_config(self.engine, data_dir, slot, keep_database=not fresh, **raw)
        hs = HomeServer(config, reactor)
        isolate_from_dns(hs)
        try:
            await hs.setup()
            hs.start_listening()
        except BaseException:
            # Close the database (and let go of its writer lock) for the next server on it.
            await hs.stop()
            raise
        client_port = hs.ports[0].getHost().port
        server = Server(hs, server_name, f"http://127.0.0.1:{client_port}", data_dir, slot, port)
        self.servers.append(server)
        self.addCleanup(lambda: defer.ensureDeferred(self._stop(server)))  # type: ignore[attr-defined]
        return server

    async def _stop(self, server: Server) -> None:
        if server.hs.ports:
            await server.hs.stop()

    async def stop_peer(self, server: Server) -> None:
        await server.hs.stop()

    async def restart_peer(self, server: Server) -> Server:
        if server.hs.ports:
            await server.hs.stop()
        self.servers.remove(server)
        return await self.start_peer(server.slot, port=server.port, data_dir=server.data_dir)

    async def two_peers(self) -> tuple[Server, Server, FedUser, FedUser]:
        """Heddles A and B, with alice on A and bob on B."""
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        return a, b, await self.fed_user(a, "alice"), await self.fed_user(b, "bob")

    async def shared_room(self) -> tuple[Server, Server, FedUser, FedUser, str]:
        """Heddles A and B, and a public room of alice's on A that bob on B has joined."""
        a, b, alice, bob = await self.two_peers()
        return a, b, alice, bob, await self.joined_public_room(a, alice, bob)

    async def joined_public_room(self, a: Server, alice: FedUser, bob: FedUser) -> str:
        """A public room alice on A creates and bob (on another server) joins, once A has
        seen the join."""
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        assert r.code == 200, r
        room_id = str(r.json["room_id"])
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        assert r.code == 200, r
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob.user_id), "join"),
            what="bob's join on A",
        )
        return room_id

    async def heddle_and_synapse(
        self, synapse_password: str
    ) -> tuple[Server, Any, FedUser, dict[str, Any]]:
        """A Heddle with alice, and a real Synapse peer with bob (skipped without one)."""
        from tests.synapse_peer import SynapsePeer, ensure_stopped, require_synapse

        require_synapse()
        heddle = await self.start_peer(0)
        peer = SynapsePeer(Path(self.mktemp()))  # type: ignore[attr-defined]
        self.addCleanup(ensure_stopped, peer)  # type: ignore[attr-defined]
        await peer.start()
        alice = await self.fed_user(heddle, "alice")
        bob = await peer.register_user("bob", synapse_password)
        return heddle, peer, alice, bob

    async def _is(self, awaitable: Any, expected: Any) -> bool:
        return bool((await awaitable) == expected)

    async def _contains(self, awaitable: Any, expected: Any) -> bool:
        return expected in (await awaitable)

    async def call(
        self, server: Server, method: str, path: str, body: Any = None, token: str | None = None
    ) -> Response:
        return await self.request(method, path, body, token=token, base_url=server.base_url)

    async def fed_user(self, server: Server, localpart: str) -> FedUser:
        r = await self.call(
            server, "POST", f"{API}/register",
            {"username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        )
        assert r.code == 200, r
        return FedUser(r.json["user_id"], r.json["access_token"], server)

    async def user_call(self, user: FedUser, method: str, path: str, body: Any = None) -> Response:
        return await self.call(user.server, method, path, body, token=user.token)

    async def device_of(self, user: FedUser) -> str:
        r = await self.user_call(user, "GET", f"{API}/account/whoami")
        assert r.code == 200, r
        return str(r.json["device_id"])

    async def second_device(self, user: FedUser) -> tuple[FedUser, str]:
        """Log the user in again: a new device, and its ID."""
        r = await self.call(
            user.server, "POST", f"{API}/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user",
             "user": user.user_id}, "password": PASSWORD},
        )
        assert r.code == 200, r
        return FedUser(user.user_id, r.json["access_token"], user.server), r.json["device_id"]

    async def send_text(self, user: FedUser, room_id: str, text: str, txn: str) -> str:
        r = await self.user_call(
            user, "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": text},
        )
        assert r.code == 200, r
        return str(r.json["event_id"])

    async def history_then_join(self, alice: FedUser, bob: FedUser, messages: int) -> str:
        """Alice creates a world-readable public room and sends `messages` texts ("old 0",
        ...); then bob joins from his server, which holds none of that history."""
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        assert r.code == 200, r
        room_id = str(r.json["room_id"])
        r = await self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.history_visibility",
            {"history_visibility": "world_readable"},
        )
        assert r.code == 200, r
        for i in range(messages):
            await self.send_text(alice, room_id, f"old {i}", f"o{i}")
        via = alice.server.server_name
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(via)}", {})
        assert r.code == 200, r
        return room_id

    async def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "") -> Any:
        """Poll an async predicate until it returns something truthy."""
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while True:
            value = await predicate()
            if value:
                return value
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                raise AssertionError(f"timed out waiting for {what or predicate}")
            await task.deferLater(reactor, 0.1, lambda: None)

    async def timeline_bodies(self, user: FedUser, room_id: str) -> list[str]:
        r = await self.user_call(
            user, "GET",
            f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=100&filter="
            + q(json.dumps({"types": ["m.room.message"]})),
        )
        if r.code != 200:
            return []
        return [e["content"].get("body") for e in reversed(r.json["chunk"])]

    async def search_bodies(self, user: FedUser, term: str) -> list[str]:
        """The bodies of the messages a server-side search for `term` finds, newest first."""
        r = await self.user_call(
            user, "POST", f"{API}/search",
            {"search_categories": {"room_events": {
                "search_term": term, "order_by": "recent", "filter": {"limit": 100},
            }}},
        )
        assert r.code == 200, r
        results = r.json["search_categories"]["room_events"]["results"]
        return [result["result"]["content"].get("body") for result in results]

    async def membership(self, user: FedUser, room_id: str, member: str) -> str | None:
        r = await self.user_call(
            user, "GET", f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(member)}"
        )
        return r.json.get("membership") if r.code == 200 else None
