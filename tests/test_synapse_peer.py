"""The Synapse federation peer harness (tests/synapse_peer.py).

`SynapsePeerTests` runs a real Synapse and is skipped when there is none (see
`synapse_python()`); the other tests need no Synapse.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from twisted.internet import defer, error
from twisted.trial import unittest
from unpaddedbase64 import decode_base64

from tests import synapse_peer
from tests.harness import ensure_deferred
from tests.synapse_peer import (
    SynapsePeer,
    ensure_stopped,
    free_port,
    require_synapse,
    write_self_signed_cert,
)

PASSWORD = "interop password 1"


class SynapsePythonTests(unittest.TestCase):
    def setUp(self) -> None:
        self._saved = os.environ.get(synapse_peer.SYNAPSE_PYTHON_ENV)

    def tearDown(self) -> None:
        if self._saved is None:
            os.environ.pop(synapse_peer.SYNAPSE_PYTHON_ENV, None)
        else:
            os.environ[synapse_peer.SYNAPSE_PYTHON_ENV] = self._saved

    def test_env_var_wins(self) -> None:
        python = Path(self.mktemp())
        python.write_text("#!/bin/sh\n")
        python.chmod(0o755)
        os.environ[synapse_peer.SYNAPSE_PYTHON_ENV] = str(python)
        self.assertEqual(synapse_peer.synapse_python(), str(python))

    def test_env_var_naming_nothing_is_an_error(self) -> None:
        os.environ[synapse_peer.SYNAPSE_PYTHON_ENV] = "/nonexistent/bin/python"
        self.assertRaises(RuntimeError, synapse_peer.synapse_python)

    def test_repo_default(self) -> None:
        os.environ.pop(synapse_peer.SYNAPSE_PYTHON_ENV, None)
        expected = (
            str(synapse_peer.DEFAULT_SYNAPSE_PYTHON)
            if os.access(synapse_peer.DEFAULT_SYNAPSE_PYTHON, os.X_OK)
            else None
        )
        self.assertEqual(synapse_peer.synapse_python(), expected)
        self.assertEqual(synapse_peer.DEFAULT_SYNAPSE_PYTHON.parent.parent.name, ".synapse-venv")


class PeerFilesTests(unittest.TestCase):
    def test_free_port(self) -> None:
        port = free_port()
        self.assertTrue(1024 <= port < 65536)

    def test_certificate_names_the_ip(self) -> None:
        work = Path(self.mktemp())
        work.mkdir()
        write_self_signed_cert(work / "c.pem", work / "k.pem")
        cert = x509.load_pem_x509_certificate((work / "c.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")])
        self.assertEqual(cert.issuer, cert.subject)

    def test_config(self) -> None:
        work = Path(self.mktemp())
        peer = SynapsePeer(work, port=18448, extra_config={"federation": {"client_timeout": "5s"}})
        self.assertEqual(peer.server_name, "127.0.0.1:18448")
        self.assertEqual(peer.base_url, "https://127.0.0.1:18448")
        peer.write_files()
        config = yaml.safe_load(peer.config_path.read_text())
        self.assertEqual(config["server_name"], "127.0.0.1:18448")
        [listener] = config["listeners"]
        self.assertEqual(listener["port"], 18448)
        self.assertEqual(listener["bind_addresses"], ["127.0.0.1"])
        self.assertIs(listener["tls"], True)
        # The whitelist does not cover IP-literal server names; the blocklist must be empty.
        self.assertEqual(config["ip_range_blacklist"], [])
        self.assertEqual(config["ip_range_whitelist"], ["127.0.0.0/8"])
        # Setting it would make Synapse ignore ip_range_whitelist for federation.
        self.assertNotIn("federation_ip_range_blacklist", config)
        self.assertIs(config["federation_verify_certificates"], False)
        self.assertEqual(config["trusted_key_servers"], [])
        # extra_config is merged in depth.
        self.assertEqual(config["federation"]["client_timeout"], "5s")
        self.assertEqual(config["federation"]["destination_min_retry_interval"], "2s")
        # Keys and certificates survive a rewrite of the config (a restart).
        key_before, cert_before = peer.verify_key_base64, peer.cert_pem
        peer.write_files()
        self.assertEqual((peer.verify_key_base64, peer.cert_pem), (key_before, cert_before))
        self.assertEqual(peer.key_id, "ed25519:a_1")


class SynapsePeerTests(unittest.TestCase):
    """Against a real Synapse process."""

    # Synapse takes a few seconds to start (more on a loaded machine); these tests start it
    # once or twice.
    timeout = 300

    def setUp(self) -> defer.Deferred[None]:
        require_synapse()
        # Under _trial_temp, so its logs are there to read after a failure.
        self.peer = SynapsePeer(Path(self.mktemp()))
        self.addCleanup(ensure_stopped, self.peer)
        return defer.ensureDeferred(self.peer.start())

    async def _server_keys(self) -> dict[str, Any]:
        response = await self.peer.request("GET", "/_matrix/key/v2/server")
        self.assertEqual(response.code, 200, response)
        keys: dict[str, Any] = response.json
        self.assertEqual(keys["server_name"], self.peer.server_name)
        # Signed by the key it publishes.
        key_id = self.peer.key_id
        published = keys["verify_keys"][key_id]["key"]
        verify_key = decode_verify_key_bytes(key_id, decode_base64(published))
        verify_signed_json(keys, self.peer.server_name, verify_key)
        return keys

    @ensure_deferred
    async def test_client_and_federation_apis(self) -> None:
        peer = self.peer
        registered = await peer.register_user("alice", PASSWORD)
        self.assertEqual(registered["user_id"], f"@alice:{peer.server_name}")
        admin = await peer.register_user("root", PASSWORD, admin=True)
        self.assertEqual(admin["user_id"], f"@root:{peer.server_name}")

        login = await peer.login("alice", PASSWORD)
        self.assertEqual(login["user_id"], registered["user_id"])
        whoami = await peer.request(
            "GET", "/_matrix/client/v3/account/whoami", token=login["access_token"]
        )
        self.assertEqual(whoami.code, 200, whoami)
        self.assertEqual(whoami.json["user_id"], registered["user_id"])
        wrong = await peer.request(
            "POST",
            "/_matrix/client/v3/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
             "password": "wrong"},
        )
        self.assertEqual(wrong.code, 403, wrong)

        keys = await self._server_keys()
        self.assertEqual(
            keys["verify_keys"][peer.key_id]["key"], peer.verify_key_base64
        )

        version = await peer.request("GET", "/_matrix/federation/v1/version")
        self.assertEqual(version.code, 200, version)
        self.assertEqual(version.json["server"]["name"], "Synapse")

        # Registration over the client API is off: users come from register_user only.
        open_registration = await peer.request(
            "POST",
            "/_matrix/client/v3/register",
            {"username": "mallory", "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        )
        self.assertEqual(open_registration.code, 403, open_registration)
        self.assertIn("Synapse", peer.log_tail(2000))

    @ensure_deferred
    async def test_restart_keeps_port_data_and_key(self) -> None:
        peer = self.peer
        await peer.register_user("bob", PASSWORD)
        before = await self._server_keys()
        port = peer.port

        await peer.restart()

        self.assertEqual(peer.port, port)
        self.assertTrue(peer.running)
        after = await self._server_keys()
        self.assertEqual(after["verify_keys"], before["verify_keys"])
        login = await peer.login("bob", PASSWORD)
        self.assertEqual(login["user_id"], f"@bob:{peer.server_name}")

    @ensure_deferred
    async def test_stop_is_idempotent(self) -> None:
        await self.peer.stop()
        self.assertFalse(self.peer.running)
        await self.peer.stop()
        with self.assertRaises(error.ConnectError):
            await self.peer.request("GET", "/_matrix/client/versions", timeout=5)


class TwoSynapsesTests(unittest.TestCase):
    """Two peers federate over loopback: the settings that Heddle's interop tests rely on
    (IP-literal server names, ip_range_whitelist, no certificate checks, no notary) work."""

    timeout = 300

    async def _start(self, name: str) -> SynapsePeer:
        peer = SynapsePeer(Path(self.mktemp()) / name)
        self.addCleanup(lambda: defer.ensureDeferred(peer.stop()))
        await peer.start()
        return peer

    def setUp(self) -> None:
        require_synapse()

    @ensure_deferred
    async def test_key_query_and_join_over_federation(self) -> None:
        a, b = await self._start("a"), await self._start("b")

        # A fetches B's keys from B itself (trusted_key_servers is empty) and serves them.
        # (Asking for a key ID: without one, the notary answers from its cache only.)
        response = await a.request(
            "POST", "/_matrix/key/v2/query", {"server_keys": {b.server_name: {b.key_id: {"minimum_valid_until_ts": 0}}}}
        )
        self.assertEqual(response.code, 200, response)
        [keys] = response.json["server_keys"]
        self.assertEqual(keys["server_name"], b.server_name)
        self.assertEqual(keys["verify_keys"][b.key_id]["key"], b.verify_key_base64)

        # A user on B joins a public room on A.
        alice = await a.register_user("alice", PASSWORD)
        bob = await b.register_user("bob", PASSWORD)
        created = await a.request(
            "POST",
            "/_matrix/client/v3/createRoom",
            {"preset": "public_chat", "room_alias_name": "lobby"},
            token=alice["access_token"],
        )
        self.assertEqual(created.code, 200, created)
        room_id = created.json["room_id"]
        joined = await b.request(
            "POST",
            f"/_matrix/client/v3/join/%23lobby:{a.server_name}",
            {},
            token=bob["access_token"],
        )
        self.assertEqual(joined.code, 200, (joined, b.log_tail(30)))
        self.assertEqual(joined.json["room_id"], room_id)
        members = await a.request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/joined_members", token=alice["access_token"]
        )
        self.assertEqual(members.code, 200, members)
        self.assertEqual(set(members.json["joined"]), {alice["user_id"], bob["user_id"]})


class PortCollisionTests(unittest.TestCase):
    timeout = 300

    def setUp(self) -> None:
        require_synapse()
        self.taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen(1)
        self.addCleanup(self.taken.close)

    @ensure_deferred
    async def test_chosen_port_taken_meanwhile_is_replaced(self) -> None:
        taken_port = self.taken.getsockname()[1]
        ports = iter([taken_port])
        real_free_port = synapse_peer.free_port
        self.patch(synapse_peer, "free_port", lambda: next(ports, None) or real_free_port())
        peer = SynapsePeer(Path(self.mktemp()))
        self.assertEqual(peer.port, taken_port)
        self.addCleanup(lambda: defer.ensureDeferred(peer.stop()))
        await peer.start()
        self.assertNotEqual(peer.port, taken_port)
        self.assertEqual(peer.server_name, f"127.0.0.1:{peer.port}")
        keys = await peer.request("GET", "/_matrix/key/v2/server")
        self.assertEqual(keys.json["server_name"], peer.server_name)

    @ensure_deferred
    async def test_explicit_port_taken_is_an_error(self) -> None:
        peer = SynapsePeer(Path(self.mktemp()), port=self.taken.getsockname()[1])
        self.addCleanup(lambda: defer.ensureDeferred(peer.stop()))
        with self.assertRaises(RuntimeError) as raised:
            await peer.start()
        self.assertIn("Address already in use", str(raised.exception))
        self.assertFalse(peer.running)
