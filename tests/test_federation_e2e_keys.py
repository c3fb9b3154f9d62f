"""End-to-end encryption keys across two Heddles: a client's /keys/query and /keys/claim
for a user of the other server go through federation `user/keys/query` and
`user/keys/claim`; user-signing signatures of a remote master key stay with the signer.

Spec: server-server API "End-to-End Encryption" (api/server-server/user_keys.yaml).
"""

from __future__ import annotations

import copy
from typing import Any

from signedjson.key import get_verify_key
from signedjson.sign import verify_signed_json

from federation.errors import HttpResponseError
from tests.federation_helpers import API, FederationTestCase, FedUser, q
from tests.harness import on_both_engines
from tests.test_e2e_key_counts import key_count_reads
from tests.test_e2e_keys import SIGNED_CURVE, CrossSigning, Device

FED = "/_matrix/federation/v1"


@on_both_engines
class FederatedKeysTests(FederationTestCase):
    async def device_of(self, user: FedUser) -> Device:
        r = await self.user_call(user, "GET", f"{API}/account/whoami")
        assert r.code == 200, r
        return Device(user.user_id, r.json["device_id"])

    async def keys_call(self, user: FedUser, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.user_call(user, "POST", f"{API}/keys/{endpoint}", body)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def setUp(self):
        super().setUp()
        self.a, self.b, self.alice, self.bob = await self.two_peers()
        self.alice_device = await self.device_of(self.alice)
        self.alice_otks = self.alice_device.one_time_keys(3)
        self.alice_fallback = self.alice_device.one_time_keys(1, fallback=True)
        await self.keys_call(
            self.alice,
            "upload",
            {
                "device_keys": self.alice_device.device_keys(),
                "one_time_keys": self.alice_otks,
                "fallback_keys": self.alice_fallback,
            },
        )
        self.alice_keys = CrossSigning(self.alice.user_id)
        r = await self.user_call(
            self.alice, "POST", f"{API}/keys/device_signing/upload", self.alice_keys.body()
        )
        self.assertEqual(r.code, 200, r)
        signed = self.alice_keys.self_signing.sign(self.alice_device.device_keys())
        result = await self.keys_call(
            self.alice,
            "signatures/upload",
            {self.alice.user_id: {self.alice_device.device_id: signed}},
        )
        self.assertEqual(result["failures"], {})

    async def test_querying_a_remote_user(self):
        result = await self.keys_call(
            self.bob, "query", {"device_keys": {self.alice.user_id: []}, "timeout": 10000}
        )
        self.assertEqual(result["failures"], {})
        device = result["device_keys"][self.alice.user_id][self.alice_device.device_id]
        self.assertEqual(device["keys"], self.alice_device.device_keys()["keys"])
        verify_signed_json(
            device, self.alice.user_id, get_verify_key(self.alice_device.signing_key)
        )
        # The self-signing signature travelled with it.
        verify_signed_json(
            device, self.alice.user_id, get_verify_key(self.alice_keys.self_signing.signing_key)
        )
        self.assertEqual(result["master_keys"], {self.alice.user_id: self.alice_keys.master.json})
        self.assertEqual(
            result["self_signing_keys"], {self.alice.user_id: self.alice_keys.self_signing.json}
        )
        # A user-signing key never leaves its owner's server.
        self.assertEqual(result["user_signing_keys"], {})

        # Asking for a device she does not have: her entry, without devices.
        none = await self.keys_call(
            self.bob, "query", {"device_keys": {self.alice.user_id: ["NOSUCHDEVICE"]}}
        )
        self.assertEqual(none["failures"], {})
        self.assertEqual(none["device_keys"].get(self.alice.user_id, {}), {})

    async def test_querying_a_remote_room_mate(self):
        """Users sharing a room: the answer may come from the device-list cache (filled
        from `user/devices`) instead of `user/keys/query`; it must say the same."""
        r = await self.user_call(self.alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        self.assertEqual(r.code, 200, r)
        room_id = r.json["room_id"]
        r = await self.user_call(
            self.bob, "POST", f"{API}/join/{q(room_id)}?via={q(self.a.server_name)}", {}
        )
        self.assertEqual(r.code, 200, r)
        for _ in range(2):  # the first query may fill the cache, the second read it
            result = await self.keys_call(
                self.bob, "query", {"device_keys": {self.alice.user_id: []}}
            )
            self.assertEqual(result["failures"], {})
            device = result["device_keys"][self.alice.user_id][self.alice_device.device_id]
            self.assertEqual(device["keys"], self.alice_device.device_keys()["keys"])
            verify_signed_json(
                device, self.alice.user_id, get_verify_key(self.alice_device.signing_key)
            )
            verify_signed_json(
                device,
                self.alice.user_id,
                get_verify_key(self.alice_keys.self_signing.signing_key),
            )
            self.assertEqual(
                result["master_keys"], {self.alice.user_id: self.alice_keys.master.json}
            )
            self.assertEqual(
                result["self_signing_keys"],
                {self.alice.user_id: self.alice_keys.self_signing.json},
            )
            named = await self.keys_call(
                self.bob, "query", {"device_keys": {self.alice.user_id: ["NOSUCHDEVICE"]}}
            )
            self.assertEqual(named["device_keys"].get(self.alice.user_id, {}), {})

    async def test_claiming_a_remote_users_keys(self):
        wanted = {self.alice.user_id: {self.alice_device.device_id: SIGNED_CURVE}}
        handed_out = []
        for _ in range(len(self.alice_otks)):
            result = await self.keys_call(self.bob, "claim", {"one_time_keys": wanted})
            self.assertEqual(result["failures"], {})
            keys = result["one_time_keys"][self.alice.user_id][self.alice_device.device_id]
            handed_out.extend(keys.items())
        self.assertEqual(sorted(k for k, _ in handed_out), sorted(self.alice_otks))
        for key_id, key in handed_out:
            self.assertEqual(key, self.alice_otks[key_id])
        self.assertEqual(
            await self.a.hs.e2e_keys.count_one_time_keys(
                self.alice.user_id, self.alice_device.device_id
            ),
            {SIGNED_CURVE: 0},
        )
        # Then the fallback key, which alice's server marks used.
        result = await self.keys_call(self.bob, "claim", {"one_time_keys": wanted})
        self.assertEqual(
            result["one_time_keys"][self.alice.user_id][self.alice_device.device_id],
            self.alice_fallback,
        )
        self.assertEqual(
            await self.a.hs.e2e_keys.unused_fallback_key_types(
                self.alice.user_id, self.alice_device.device_id
            ),
            [],
        )
        # Unknown devices and algorithms: nothing, and no failure.
        result = await self.keys_call(
            self.bob,
            "claim",
            {
                "one_time_keys": {
                    self.alice.user_id: {"NOSUCHDEVICE": SIGNED_CURVE},
                    f"@nobody:{self.a.server_name}": {"X": SIGNED_CURVE},
                }
            },
        )
        self.assertEqual(result, {"one_time_keys": {}, "failures": {}})

    async def alice_key_counts(self) -> tuple[dict[str, int], list[str], int]:
        """Alice's sync on her server: one-time key counts, unused fallback key types, and
        how many key-count transactions her server ran for it."""
        r, reads = await key_count_reads(
            self.a.hs, lambda: self.user_call(self.alice, "GET", f"{API}/sync?timeout=0")
        )
        self.assertEqual(r.code, 200, r)
        return (
            r.json["device_one_time_keys_count"],
            r.json["device_unused_fallback_key_types"],
            reads,
        )

    async def test_a_remote_claim_changes_the_counts_alice_syncs(self):
        """Alice's counts, held in memory by her server once read, are forgotten when a
        claim over federation takes one of her keys or hands out her fallback key."""
        wanted = {self.alice.user_id: {self.alice_device.device_id: SIGNED_CURVE}}
        left = len(self.alice_otks)
        self.assertEqual((await self.alice_key_counts())[:2], ({SIGNED_CURVE: left}, [SIGNED_CURVE]))
        for expected in (*range(left - 1, -1, -1), "fallback"):
            result = await self.keys_call(self.bob, "claim", {"one_time_keys": wanted})
            self.assertEqual(result["failures"], {})
            unused = [] if expected == "fallback" else [SIGNED_CURVE]
            counts = {SIGNED_CURVE: 0 if expected == "fallback" else expected}
            self.assertEqual(await self.alice_key_counts(), (counts, unused, 1))
            # And the next sync answers from memory.
            self.assertEqual(await self.alice_key_counts(), (counts, unused, 0))

    async def test_signing_a_remote_master_key_is_seen_by_the_signer_only(self):
        bob_keys = CrossSigning(self.bob.user_id)
        r = await self.user_call(
            self.bob, "POST", f"{API}/keys/device_signing/upload", bob_keys.body()
        )
        self.assertEqual(r.code, 200, r)
        signed = bob_keys.user_signing.sign(copy.deepcopy(self.alice_keys.master.json))
        result = await self.keys_call(
            self.bob,
            "signatures/upload",
            {self.alice.user_id: {self.alice_keys.master.public: signed}},
        )
        self.assertEqual(result, {"failures": {}})

        as_bob = await self.keys_call(self.bob, "query", {"device_keys": {self.alice.user_id: []}})
        master = as_bob["master_keys"][self.alice.user_id]
        verify_signed_json(
            master, self.bob.user_id, get_verify_key(bob_keys.user_signing.signing_key)
        )
        as_alice = await self.keys_call(
            self.alice, "query", {"device_keys": {self.alice.user_id: []}}
        )
        self.assertEqual(as_alice["master_keys"][self.alice.user_id], self.alice_keys.master.json)

        # A forged one is refused.
        forged = copy.deepcopy(signed)
        forged["usage"] = ["master", "extra"]
        result = await self.keys_call(
            self.bob,
            "signatures/upload",
            {self.alice.user_id: {self.alice_keys.master.public: forged}},
        )
        failure = result["failures"][self.alice.user_id][self.alice_keys.master.public]
        self.assertEqual(failure["errcode"], "M_INVALID_PARAM")

    async def test_the_federation_endpoints_answer_for_local_users_only(self):
        client = self.b.hs.federation_client
        stranger = f"@someone:{self.b.server_name}"
        answer = await client.post_json(
            self.a.server_name,
            f"{FED}/user/keys/query",
            {"device_keys": {self.alice.user_id: [], stranger: []}},
        )
        self.assertEqual(list(answer["device_keys"]), [self.alice.user_id])
        self.assertNotIn("user_signing_keys", answer)
        self.assertEqual(answer["master_keys"], {self.alice.user_id: self.alice_keys.master.json})
        answer = await client.post_json(
            self.a.server_name,
            f"{FED}/user/keys/claim",
            {
                "one_time_keys": {
                    self.alice.user_id: {self.alice_device.device_id: SIGNED_CURVE},
                    stranger: {"DEV": SIGNED_CURVE},
                }
            },
        )
        self.assertEqual(list(answer["one_time_keys"]), [self.alice.user_id])

    async def test_the_federation_endpoints_need_a_signed_request(self):
        client = self.b.hs.federation_client
        for endpoint, body in (
            ("query", {"device_keys": {self.alice.user_id: []}}),
            ("claim", {"one_time_keys": {self.alice.user_id: {"X": SIGNED_CURVE}}}),
        ):
            with self.assertRaises(HttpResponseError) as caught:
                await client.post_json(
                    self.a.server_name, f"{FED}/user/keys/{endpoint}", body, signed=False
                )
            self.assertEqual(caught.exception.code, 401)
            self.assertEqual(caught.exception.errcode, "M_UNAUTHORIZED")
        for endpoint, body in (("query", {"device_keys": []}), ("claim", {})):
            with self.assertRaises(HttpResponseError) as caught:
                await client.post_json(self.a.server_name, f"{FED}/user/keys/{endpoint}", body)
            self.assertEqual(caught.exception.code, 400)
            self.assertEqual(caught.exception.errcode, "M_BAD_JSON")
        # Nothing was claimed by any of it.
        self.assertEqual(
            await self.a.hs.e2e_keys.count_one_time_keys(
                self.alice.user_id, self.alice_device.device_id
            ),
            {SIGNED_CURVE: len(self.alice_otks)},
        )
