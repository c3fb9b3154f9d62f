"""End-to-end encryption keys over the client API: /keys/upload, /keys/query, /keys/claim,
/keys/device_signing/upload and /keys/signatures/upload.

Spec: api/client-server/keys.yaml, cross_signing.yaml; client-server API "End-to-End
Encryption". Keys are made with signedjson (like a client's) so every bad input can be
built on purpose; one test uses matrix-nio's real (vodozemac) keys.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import tempfile
from types import SimpleNamespace
from typing import Any

from nio import AsyncClient, AsyncClientConfig, KeysUploadResponse, LoginResponse
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json, verify_signed_json
from twisted.internet import defer, protocol, reactor

from tests.harness import (
    PASSWORD,
    HomeserverTestCase,
    Response,
    nio,
    on_both_engines,
    password_auth,
)

KEYS = "/_matrix/client/v3/keys"
OLM = "m.olm.v1.curve25519-aes-sha2"
MEGOLM = "m.megolm.v1.aes-sha2"
SIGNED_CURVE = "signed_curve25519"


def unpadded(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def random_key() -> str:
    return unpadded(os.urandom(32))


class Device:
    """A client device's keys, made and signed like a real client's."""

    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.signing_key = generate_signing_key(device_id)
        self.ed25519 = encode_verify_key_base64(get_verify_key(self.signing_key))
        self.curve25519 = random_key()
        self.counter = 0

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.device_id}"

    def device_keys(self, **fields: Any) -> dict[str, Any]:
        keys: dict[str, Any] = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": [OLM, MEGOLM],
            "keys": {
                f"curve25519:{self.device_id}": self.curve25519,
                f"ed25519:{self.device_id}": self.ed25519,
            },
        }
        keys.update(fields)
        return sign_json(keys, self.user_id, self.signing_key)

    def one_time_keys(self, count: int, fallback: bool = False) -> dict[str, Any]:
        keys = {}
        for _ in range(count):
            self.counter += 1
            key: dict[str, Any] = {"key": random_key()}
            if fallback:
                key["fallback"] = True
            keys[f"{SIGNED_CURVE}:AAAA{self.counter:04d}"] = sign_json(
                key, self.user_id, self.signing_key
            )
        return keys


class CrossSigningKey:
    """One cross-signing key pair and its public JSON."""

    def __init__(self, user_id: str, usage: str, signer: CrossSigningKey | None = None) -> None:
        self.signing_key = generate_signing_key("x")
        self.public = encode_verify_key_base64(get_verify_key(self.signing_key))
        self.signing_key.version = self.public
        self.user_id = user_id
        self.json: dict[str, Any] = {
            "user_id": user_id,
            "usage": [usage],
            "keys": {f"ed25519:{self.public}": self.public},
        }
        if signer is not None:
            signer.sign(self.json)

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public}"

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json(obj, self.user_id, self.signing_key)


class CrossSigning:
    def __init__(self, user_id: str) -> None:
        self.master = CrossSigningKey(user_id, "master")
        self.self_signing = CrossSigningKey(user_id, "self_signing", self.master)
        self.user_signing = CrossSigningKey(user_id, "user_signing", self.master)

    def body(self, **extra: Any) -> dict[str, Any]:
        return {
            "master_key": self.master.json,
            "self_signing_key": self.self_signing.json,
            "user_signing_key": self.user_signing.json,
            **extra,
        }


class RecordingDeviceLists:
    """Stands in for the device-list tracker: records what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.cached: dict[str, Any] = {}

    async def device_changed(
        self, user_id: str, device_ids: list[str], deleted: bool = False
    ) -> None:
        self.calls.append(("device", user_id, sorted(device_ids)))

    async def signing_keys_changed(self, user_id: str) -> None:
        self.calls.append(("signing", user_id))

    async def get_cached_remote_keys(self, user_id: str, wait_ms: int = 0) -> Any:
        return self.cached.get(user_id)


class Account:
    def __init__(self, user_id: str, token: str, device_id: str) -> None:
        self.user_id = user_id
        self.token = token
        self.device = Device(user_id, device_id)


class KeysTestCase(HomeserverTestCase):
    async def account(self, localpart: str) -> Account:
        r = await self.register(localpart)
        return Account(r["user_id"], r["access_token"], r["device_id"])

    async def upload(self, account: Account, body: dict[str, Any]) -> Response:
        return await self.request("POST", f"{KEYS}/upload", body, token=account.token)

    async def upload_ok(self, account: Account, body: dict[str, Any]) -> dict[str, int]:
        r = await self.upload(account, body)
        self.assertEqual(r.code, 200, r)
        return r.json["one_time_key_counts"]

    async def query(
        self, account: Account, device_keys: dict[str, list[str]], **extra: Any
    ) -> dict[str, Any]:
        r = await self.request(
            "POST", f"{KEYS}/query", {"device_keys": device_keys, **extra}, token=account.token
        )
        self.assertEqual(r.code, 200, r)
        return r.json

    async def claim(
        self, account: Account, one_time_keys: dict[str, dict[str, str]]
    ) -> dict[str, Any]:
        r = await self.request(
            "POST", f"{KEYS}/claim", {"one_time_keys": one_time_keys}, token=account.token
        )
        self.assertEqual(r.code, 200, r)
        return r.json

    async def cross_signing_upload(self, account: Account, body: dict[str, Any]) -> Response:
        return await self.request(
            "POST", f"{KEYS}/device_signing/upload", body, token=account.token
        )

    async def signatures_upload(self, account: Account, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.request("POST", f"{KEYS}/signatures/upload", body, token=account.token)
        self.assertEqual(r.code, 200, r)
        return r.json

    def record_device_lists(self) -> RecordingDeviceLists:
        recorder = RecordingDeviceLists()
        self.hs.e2e_keys.device_lists = recorder
        return recorder


# ----- device keys ---------------------------------------------------------------------------


@on_both_engines
class DeviceKeysTests(KeysTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.account("alice")
        self.bob = await self.account("bob")

    async def test_uploaded_keys_are_returned_by_query_with_the_display_name(self):
        counts = await self.upload_ok(self.alice, {"device_keys": self.alice.device.device_keys()})
        self.assertEqual(counts, {SIGNED_CURVE: 0})
        r = await self.request(
            "PUT",
            f"/_matrix/client/v3/devices/{self.alice.device.device_id}",
            {"display_name": "Alice's phone"},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)

        result = await self.query(self.bob, {self.alice.user_id: []})
        device = result["device_keys"][self.alice.user_id][self.alice.device.device_id]
        self.assertEqual(device["unsigned"], {"device_display_name": "Alice's phone"})
        self.assertEqual(device["keys"], self.alice.device.device_keys()["keys"])
        self.assertEqual(device["algorithms"], [OLM, MEGOLM])
        # Still verifiable by the device's own key: exactly what was uploaded.
        verify_signed_json(
            device, self.alice.user_id, get_verify_key(self.alice.device.signing_key)
        )
        self.assertEqual(result["failures"], {})
        self.assertEqual(result["master_keys"], {})
        self.assertEqual(result["self_signing_keys"], {})

    async def test_query_for_named_devices_and_unknown_users(self):
        await self.upload_ok(self.alice, {"device_keys": self.alice.device.device_keys()})
        other = await self.login("alice")
        second = Account(self.alice.user_id, other["access_token"], other["device_id"])
        await self.upload_ok(second, {"device_keys": second.device.device_keys()})

        everything = await self.query(self.bob, {self.alice.user_id: []})
        self.assertEqual(
            sorted(everything["device_keys"][self.alice.user_id]),
            sorted([self.alice.device.device_id, second.device.device_id]),
        )
        one = await self.query(self.bob, {self.alice.user_id: [second.device.device_id, "NOPE"]})
        self.assertEqual(list(one["device_keys"][self.alice.user_id]), [second.device.device_id])
        # Unknown local users, devices without keys, malformed user IDs: no keys, no error.
        unknown = await self.query(
            self.bob, {"@nobody:test.heddle": [], self.bob.user_id: [], "not a user": []}
        )
        self.assertEqual(unknown["device_keys"], {"@nobody:test.heddle": {}, self.bob.user_id: {}})
        self.assertEqual(unknown["failures"], {})

    async def test_identical_reupload_is_accepted_and_tells_nobody(self):
        recorder = self.record_device_lists()
        keys = self.alice.device.device_keys()
        await self.upload_ok(self.alice, {"device_keys": keys})
        self.assertEqual(
            recorder.calls, [("device", self.alice.user_id, [self.alice.device.device_id])]
        )
        await self.upload_ok(self.alice, {"device_keys": copy.deepcopy(keys)})
        self.assertEqual(len(recorder.calls), 1)

    async def test_device_keys_for_another_user_are_refused(self):
        bob_keys = Device(self.bob.user_id, self.alice.device.device_id).device_keys()
        r = await self.upload(self.alice, {"device_keys": bob_keys})
        self.assertError(r, 400, "M_BAD_JSON")
        result = await self.query(self.bob, {self.alice.user_id: [], self.bob.user_id: []})
        self.assertEqual(result["device_keys"], {self.alice.user_id: {}, self.bob.user_id: {}})

    async def test_device_keys_for_another_device_are_refused(self):
        other = Device(self.alice.user_id, "SOMEOTHERDEVICE")
        r = await self.upload(self.alice, {"device_keys": other.device_keys()})
        self.assertError(r, 400, "M_BAD_JSON")
        # Nor a device of another user that happens to share the device ID.
        bobs = Device(self.bob.user_id, self.bob.device.device_id)
        r = await self.upload(self.alice, {"device_keys": bobs.device_keys()})
        self.assertError(r, 400, "M_BAD_JSON")
        result = await self.query(self.alice, {self.alice.user_id: []})
        self.assertEqual(result["device_keys"][self.alice.user_id], {})

    async def test_keys_whose_signature_does_not_verify_are_stored(self):
        # The spec asks the uploading client to sign its device keys and the clients that
        # download them to check the signature; the server is not asked to, and Synapse
        # stores them unchecked (SyTest uploads placeholder keys and signatures). So these
        # are stored and served as uploaded, for clients to reject.
        device = self.alice.device
        impostor = Device(self.alice.user_id, device.device_id)
        wrong_signer = impostor.device_keys(
            keys={
                f"ed25519:{device.device_id}": device.ed25519,
                f"curve25519:{device.device_id}": device.curve25519,
            }
        )
        tampered = device.device_keys()
        tampered["algorithms"] = [MEGOLM]
        unsigned = device.device_keys()
        unsigned["signatures"] = {}
        garbage = device.device_keys()
        garbage["signatures"][device.user_id][device.key_id] = "self+signature"
        placeholder = device.device_keys(
            keys={device.key_id: "ed25519+key", f"curve25519:{device.device_id}": "curve25519+key"}
        )
        no_ed25519 = device.device_keys(keys={"ed25519:test": "c3op6BJi8aUnDGA541Q6TbTPmbiy1GqG"})
        for uploaded in (wrong_signer, tampered, unsigned, garbage, placeholder, no_ed25519):
            await self.upload_ok(self.alice, {"device_keys": uploaded})
            result = await self.query(self.bob, {self.alice.user_id: []})
            stored = result["device_keys"][self.alice.user_id][device.device_id]
            stored.pop("unsigned", None)
            self.assertEqual(stored, uploaded)

    async def test_changed_identity_keys_replace_the_stored_ones(self):
        # Synapse lets a device's keys change (the spec does not forbid it); clients
        # notice the change when they query the keys again, and the change is announced.
        device = self.alice.device
        await self.upload_ok(self.alice, {"device_keys": device.device_keys()})
        recorder = self.record_device_lists()
        replacement = Device(self.alice.user_id, device.device_id)
        await self.upload_ok(self.alice, {"device_keys": replacement.device_keys()})
        self.assertEqual(recorder.calls, [("device", self.alice.user_id, [device.device_id])])
        result = await self.query(self.bob, {self.alice.user_id: []})
        stored = result["device_keys"][self.alice.user_id][device.device_id]
        self.assertEqual(stored["keys"], replacement.device_keys()["keys"])
        # One-time keys are now checked against the new key.
        r = await self.upload(self.alice, {"one_time_keys": device.one_time_keys(1)})
        self.assertError(r, 400, "M_INVALID_SIGNATURE")
        await self.upload_ok(self.alice, {"one_time_keys": replacement.one_time_keys(1)})

    async def test_new_algorithms_and_added_keys_may_be_uploaded(self):
        device = self.alice.device
        await self.upload_ok(self.alice, {"device_keys": device.device_keys()})
        recorder = self.record_device_lists()
        more = device.device_keys(
            algorithms=[OLM, MEGOLM, "org.example.new"],
            keys={
                device.key_id: device.ed25519,
                f"curve25519:{device.device_id}": device.curve25519,
                f"org.example:{device.device_id}": "something",
            },
        )
        await self.upload_ok(self.alice, {"device_keys": more})
        self.assertEqual(recorder.calls, [("device", self.alice.user_id, [device.device_id])])
        result = await self.query(self.bob, {self.alice.user_id: []})
        stored = result["device_keys"][self.alice.user_id][device.device_id]
        self.assertEqual(stored["algorithms"], [OLM, MEGOLM, "org.example.new"])

    async def test_malformed_device_keys_are_refused(self):
        # The shape of the spec's DeviceKeys is checked (as Synapse does); the keys'
        # contents and signature are not (see above).
        device = self.alice.device
        missing_signatures = device.device_keys()
        del missing_signatures["signatures"]
        missing_algorithms = device.device_keys()
        del missing_algorithms["algorithms"]
        missing_keys = device.device_keys()
        del missing_keys["keys"]
        number_key = device.device_keys()
        number_key["keys"][device.key_id] = 5
        algorithm_not_a_string = device.device_keys(algorithms=[OLM, 5])
        algorithms_not_a_list = device.device_keys(algorithms=OLM)
        signature_not_a_string = device.device_keys()
        signature_not_a_string["signatures"][device.user_id][device.key_id] = 5
        signatures_not_by_user = device.device_keys()
        signatures_not_by_user["signatures"] = {device.user_id: "x"}
        for bad in (
            missing_signatures,
            missing_algorithms,
            missing_keys,
            number_key,
            algorithm_not_a_string,
            algorithms_not_a_list,
            signature_not_a_string,
            signatures_not_by_user,
            "x",
            [],
        ):
            r = await self.upload(self.alice, {"device_keys": bad})
            self.assertError(r, 400, "M_BAD_JSON")

    async def test_upload_needs_an_access_token(self):
        r = await self.request(
            "POST", f"{KEYS}/upload", {"device_keys": self.alice.device.device_keys()}
        )
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("POST", f"{KEYS}/query", {"device_keys": {}})
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("POST", f"{KEYS}/claim", {"one_time_keys": {}})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_malformed_query_and_claim_bodies(self):
        for body in (
            {},
            {"device_keys": []},
            {"device_keys": {"@a:b": "DEV"}},
            {"device_keys": {}, "timeout": "1"},
        ):
            r = await self.request("POST", f"{KEYS}/query", body, token=self.alice.token)
            self.assertError(r, 400, "M_BAD_JSON")
        for body in (
            {},
            {"one_time_keys": {"@a:b": ["DEV"]}},
            {"one_time_keys": {"@a:b": {"DEV": 1}}},
        ):
            r = await self.request("POST", f"{KEYS}/claim", body, token=self.alice.token)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("POST", f"{KEYS}/query", raw=b"{not json", token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")


# ----- one-time and fallback keys ---------------------------------------------------------


@on_both_engines
class OneTimeKeyTests(KeysTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.account("alice")
        self.bob = await self.account("bob")
        await self.upload_ok(self.alice, {"device_keys": self.alice.device.device_keys()})

    def wanted(self, algorithm: str = SIGNED_CURVE) -> dict[str, dict[str, str]]:
        return {self.alice.user_id: {self.alice.device.device_id: algorithm}}

    async def claimed_key(self, algorithm: str = SIGNED_CURVE) -> tuple[str, Any] | None:
        result = await self.claim(self.bob, self.wanted(algorithm))
        self.assertEqual(result["failures"], {})
        keys = result["one_time_keys"].get(self.alice.user_id, {}).get(self.alice.device.device_id)
        if keys is None:
            return None
        self.assertEqual(len(keys), 1)
        return next(iter(keys.items()))

    async def test_upload_counts_and_claims_one_at_a_time_in_upload_order(self):
        first = self.alice.device.one_time_keys(3)
        counts = await self.upload_ok(self.alice, {"one_time_keys": first})
        self.assertEqual(counts, {SIGNED_CURVE: 3})
        second = self.alice.device.one_time_keys(2)
        # Plain curve25519 keys are strings.
        second["curve25519:plain1"] = random_key()
        counts = await self.upload_ok(self.alice, {"one_time_keys": second})
        self.assertEqual(counts, {SIGNED_CURVE: 5, "curve25519": 1})

        claimed = []
        for _ in range(5):
            key = await self.claimed_key()
            assert key is not None
            claimed.append(key)
        # The first upload's keys go first; the device's signature is kept.
        self.assertEqual({k for k, _ in claimed[:3]}, set(first))
        self.assertEqual(
            {k for k, _ in claimed[3:]}, {k for k in second if k.startswith(SIGNED_CURVE)}
        )
        for _, key in claimed:
            verify_signed_json(
                key, self.alice.user_id, get_verify_key(self.alice.device.signing_key)
            )
        self.assertIsNone(await self.claimed_key())
        self.assertEqual(
            await self.hs.e2e_keys.count_one_time_keys(
                self.alice.user_id, self.alice.device.device_id
            ),
            {SIGNED_CURVE: 0, "curve25519": 1},
        )
        plain = await self.claimed_key("curve25519")
        assert plain is not None
        self.assertEqual(plain, ("curve25519:plain1", second["curve25519:plain1"]))

    async def test_keys_and_device_keys_in_one_upload(self):
        account = await self.account("carol")
        counts = await self.upload_ok(
            account,
            {
                "device_keys": account.device.device_keys(),
                "one_time_keys": account.device.one_time_keys(4),
                "fallback_keys": account.device.one_time_keys(1, fallback=True),
            },
        )
        self.assertEqual(counts, {SIGNED_CURVE: 4})
        self.assertEqual(
            await self.hs.e2e_keys.unused_fallback_key_types(
                account.user_id, account.device.device_id
            ),
            [SIGNED_CURVE],
        )

    async def test_fallback_key_is_handed_out_when_one_time_keys_run_out(self):
        user, device = self.alice.user_id, self.alice.device.device_id
        fallback = self.alice.device.one_time_keys(1, fallback=True)
        otks = self.alice.device.one_time_keys(1)
        await self.upload_ok(self.alice, {"one_time_keys": otks, "fallback_keys": fallback})
        self.assertEqual(
            await self.hs.e2e_keys.unused_fallback_key_types(user, device), [SIGNED_CURVE]
        )

        self.assertEqual(await self.claimed_key(), next(iter(otks.items())))
        self.assertEqual(
            await self.hs.e2e_keys.unused_fallback_key_types(user, device), [SIGNED_CURVE]
        )
        # Out of one-time keys: the fallback key, as often as asked, now marked used.
        for _ in range(2):
            self.assertEqual(await self.claimed_key(), next(iter(fallback.items())))
        self.assertEqual(await self.hs.e2e_keys.unused_fallback_key_types(user, device), [])

        # The same key uploaded again stays used; a new one replaces it, unused.
        await self.upload_ok(self.alice, {"fallback_keys": copy.deepcopy(fallback)})
        self.assertEqual(await self.hs.e2e_keys.unused_fallback_key_types(user, device), [])
        replacement = self.alice.device.one_time_keys(1, fallback=True)
        await self.upload_ok(self.alice, {"fallback_keys": replacement})
        self.assertEqual(
            await self.hs.e2e_keys.unused_fallback_key_types(user, device), [SIGNED_CURVE]
        )
        self.assertEqual(await self.claimed_key(), next(iter(replacement.items())))

    async def test_reuploading_a_one_time_key(self):
        keys = self.alice.device.one_time_keys(2)
        await self.upload_ok(self.alice, {"one_time_keys": keys})
        # The same keys again (a retried request): fine, nothing added.
        counts = await self.upload_ok(self.alice, {"one_time_keys": copy.deepcopy(keys)})
        self.assertEqual(counts, {SIGNED_CURVE: 2})
        # The same ID with another key: refused, and nothing of that upload is stored.
        key_id = next(iter(keys))
        changed = {
            key_id: sign_json(
                {"key": random_key()}, self.alice.user_id, self.alice.device.signing_key
            )
        }
        changed.update(self.alice.device.one_time_keys(1))
        r = await self.upload(self.alice, {"one_time_keys": changed})
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(
            await self.hs.e2e_keys.count_one_time_keys(
                self.alice.user_id, self.alice.device.device_id
            ),
            {SIGNED_CURVE: 2},
        )
        first = await self.claimed_key()
        assert first is not None
        self.assertEqual(first, (sorted(keys)[0], keys[sorted(keys)[0]]))

    async def test_malformed_one_time_keys_are_refused(self):
        device = self.alice.device
        good = next(iter(device.one_time_keys(1).values()))
        for name, value in (
            ("signed_curve25519", good),  # no key ID
            (":AAAA", good),  # no algorithm
            ("signed_curve25519:", good),
            ("signed_curve25519:A:B", good),
            ("signed_curve25519:AAAA" + "x" * 300, good),
            ("signed_curve25519:AAAA", random_key()),  # a signed key as a bare string
            ("signed_curve25519:AAAA", 42),
            ("signed_curve25519:AAAA", ["x"]),
            ("signed_curve25519:AAAA", {"signatures": good["signatures"]}),  # no key
            ("signed_curve25519:AAAA", {"key": 5, "signatures": good["signatures"]}),
            ("signed_curve25519:AAAA", {"key": good["key"]}),  # no signatures at all
            ("curve25519:AAAA", "c2hvcnQ"),  # not 32 bytes
        ):
            for field in ("one_time_keys", "fallback_keys"):
                r = await self.upload(self.alice, {field: {name: value}})
                self.assertError(r, 400, "M_BAD_JSON")
        r = await self.upload(self.alice, {"one_time_keys": ["x"]})
        self.assertError(r, 400, "M_BAD_JSON")
        # Two fallback keys for one algorithm.
        r = await self.upload(self.alice, {"fallback_keys": device.one_time_keys(2, fallback=True)})
        self.assertError(r, 400, "M_BAD_JSON")
        self.assertEqual(
            await self.hs.e2e_keys.count_one_time_keys(self.alice.user_id, device.device_id),
            {SIGNED_CURVE: 0},
        )
        self.assertEqual(
            await self.hs.e2e_keys.unused_fallback_key_types(self.alice.user_id, device.device_id),
            [],
        )

    async def test_one_time_keys_must_be_signed_by_the_device(self):
        device = self.alice.device
        stranger = Device(self.alice.user_id, device.device_id)
        tampered = device.one_time_keys(1)
        next(iter(tampered.values()))["key"] = random_key()
        for bad in (stranger.one_time_keys(1), tampered):
            for field in ("one_time_keys", "fallback_keys"):
                r = await self.upload(self.alice, {field: bad})
                self.assertError(r, 400, "M_INVALID_SIGNATURE")
        # A device without keys cannot have its one-time keys checked.
        carol = await self.account("carol")
        r = await self.upload(carol, {"one_time_keys": carol.device.one_time_keys(1)})
        self.assertError(r, 400, "M_INVALID_SIGNATURE")
        # One bad key spoils the upload: nothing is stored.
        mixed = {**device.one_time_keys(3), **stranger.one_time_keys(1)}
        r = await self.upload(self.alice, {"one_time_keys": mixed})
        self.assertError(r, 400, "M_INVALID_SIGNATURE")
        self.assertEqual(
            await self.hs.e2e_keys.count_one_time_keys(self.alice.user_id, device.device_id),
            {SIGNED_CURVE: 0},
        )

    async def test_claims_for_unknown_users_devices_and_algorithms_are_empty(self):
        await self.upload_ok(self.alice, {"one_time_keys": self.alice.device.one_time_keys(1)})
        result = await self.claim(
            self.bob,
            {
                "@nobody:test.heddle": {"DEV": SIGNED_CURVE},
                self.alice.user_id: {"NODEVICE": SIGNED_CURVE},
                self.bob.user_id: {self.bob.device.device_id: SIGNED_CURVE},
                "not a user id": {"DEV": SIGNED_CURVE},
            },
        )
        self.assertEqual(result, {"one_time_keys": {}, "failures": {}})
        self.assertIsNone(await self.claimed_key("curve25519"))
        # Alice's key is still there.
        self.assertIsNotNone(await self.claimed_key())

    async def test_concurrent_claims_never_hand_out_a_key_twice(self):
        keys = self.alice.device.one_time_keys(12)
        fallback = self.alice.device.one_time_keys(1, fallback=True)
        await self.upload_ok(self.alice, {"one_time_keys": keys, "fallback_keys": fallback})
        claimers = [self.bob, *[await self.account(f"claimer{i}") for i in range(3)]]

        async def claim(account: Account) -> Response:
            return await self.request(
                "POST", f"{KEYS}/claim", {"one_time_keys": self.wanted()}, token=account.token
            )

        responses = await defer.gatherResults(
            [defer.ensureDeferred(claim(claimers[i % len(claimers)])) for i in range(20)]
        )
        handed_out = []
        for r in responses:
            self.assertEqual(r.code, 200, r)
            handed_out.extend(
                r.json["one_time_keys"][self.alice.user_id][self.alice.device.device_id]
            )
        fallback_id = next(iter(fallback))
        one_time = [k for k in handed_out if k != fallback_id]
        self.assertEqual(sorted(one_time), sorted(keys))
        self.assertEqual(handed_out.count(fallback_id), 8)


# ----- remote users -----------------------------------------------------------------------


class SilentServer(protocol.Protocol):
    """Accepts connections and never says a word (a server that hangs)."""


@on_both_engines
class RemoteQueryTests(KeysTestCase):
    config_overrides = {"federation": {"ip_range_allowlist": ["127.0.0.0/8"], "verify_tls": False}}

    async def setUp(self):
        await super().setUp()
        self.alice = await self.account("alice")

    async def test_an_unreachable_server_is_a_failure_not_an_error(self):
        closed = "127.0.0.1:1"
        result = await self.query(self.alice, {f"@bob:{closed}": [], self.alice.user_id: []})
        self.assertEqual(list(result["failures"]), [closed])
        self.assertEqual(result["failures"][closed]["status"], 503)
        self.assertNotIn(f"@bob:{closed}", result["device_keys"])
        self.assertEqual(result["device_keys"], {self.alice.user_id: {}})
        claimed = await self.claim(self.alice, {f"@bob:{closed}": {"DEV": SIGNED_CURVE}})
        self.assertEqual(list(claimed["failures"]), [closed])
        self.assertEqual(claimed["one_time_keys"], {})

    async def test_the_timeout_bounds_how_long_a_silent_server_is_waited_for(self):
        factory = protocol.Factory.forProtocol(SilentServer)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        silent = f"127.0.0.1:{port.getHost().port}"
        start = reactor.seconds()
        result = await self.query(self.alice, {f"@bob:{silent}": []}, timeout=500)
        self.assertLess(reactor.seconds() - start, 10)
        self.assertIn(silent, result["failures"])
        start = reactor.seconds()
        r = await self.request(
            "POST",
            f"{KEYS}/claim",
            {"one_time_keys": {f"@bob:{silent}": {"DEV": SIGNED_CURVE}}, "timeout": 500},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertLess(reactor.seconds() - start, 10)
        self.assertIn(silent, r.json["failures"])

    async def test_cached_remote_keys_are_used_without_asking_the_server(self):
        recorder = self.record_device_lists()
        remote_user = "@bob:127.0.0.1:1"
        bob = Device(remote_user, "BOBDEV")
        master = CrossSigningKey(remote_user, "master")
        self_signing = CrossSigningKey(remote_user, "self_signing", master)
        other_device = Device(remote_user, "OTHER").device_keys()
        recorder.cached[remote_user] = SimpleNamespace(
            devices={"BOBDEV": bob.device_keys(), "OTHER": other_device},
            master_key=master.json,
            self_signing_key=self_signing.json,
        )
        result = await self.query(self.alice, {remote_user: ["BOBDEV"]})
        self.assertEqual(result["failures"], {})
        self.assertEqual(result["device_keys"], {remote_user: {"BOBDEV": bob.device_keys()}})
        self.assertEqual(result["master_keys"], {remote_user: master.json})
        self.assertEqual(result["self_signing_keys"], {remote_user: self_signing.json})


# ----- cross-signing ----------------------------------------------------------------------


@on_both_engines
class CrossSigningTests(KeysTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.account("alice")
        self.bob = await self.account("bob")
        await self.upload_ok(self.alice, {"device_keys": self.alice.device.device_keys()})
        self.keys = CrossSigning(self.alice.user_id)

    async def upload_cross_signing(self) -> None:
        r = await self.cross_signing_upload(self.alice, self.keys.body())
        self.assertEqual(r.code, 200, r)

    async def test_first_upload_needs_no_auth_and_others_see_master_and_self_signing(self):
        recorder = self.record_device_lists()
        await self.upload_cross_signing()
        self.assertEqual(recorder.calls, [("signing", self.alice.user_id)])
        theirs = await self.query(self.bob, {self.alice.user_id: []})
        self.assertEqual(theirs["master_keys"], {self.alice.user_id: self.keys.master.json})
        self.assertEqual(
            theirs["self_signing_keys"], {self.alice.user_id: self.keys.self_signing.json}
        )
        # The user-signing key is for its owner's eyes only.
        self.assertEqual(theirs["user_signing_keys"], {})
        mine = await self.query(self.alice, {self.alice.user_id: []})
        self.assertEqual(
            mine["user_signing_keys"], {self.alice.user_id: self.keys.user_signing.json}
        )
        # Nor does anyone see it when they ask about the owner alongside themselves.
        both = await self.query(self.bob, {self.alice.user_id: [], self.bob.user_id: []})
        self.assertEqual(both["user_signing_keys"], {})

    async def test_the_same_keys_again_need_no_auth(self):
        await self.upload_cross_signing()
        recorder = self.record_device_lists()
        r = await self.cross_signing_upload(self.alice, copy.deepcopy(self.keys.body()))
        self.assertEqual(r.code, 200, r)
        r = await self.cross_signing_upload(self.alice, {"master_key": self.keys.master.json})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(recorder.calls, [])

    async def test_replacing_keys_needs_user_interactive_auth(self):
        await self.upload_cross_signing()
        new = CrossSigning(self.alice.user_id)
        r = await self.cross_signing_upload(self.alice, new.body())
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["flows"], [{"stages": ["m.login.password"]}])
        session = r.json["session"]
        # Nothing changed yet.
        theirs = await self.query(self.bob, {self.alice.user_id: []})
        self.assertEqual(theirs["master_keys"], {self.alice.user_id: self.keys.master.json})
        # Only a new self-signing key under the same master: also a replacement.
        only_ssk = CrossSigningKey(self.alice.user_id, "self_signing", self.keys.master)
        r = await self.cross_signing_upload(self.alice, {"self_signing_key": only_ssk.json})
        self.assertEqual(r.code, 401, r)
        # A wrong password is not enough.
        r = await self.cross_signing_upload(
            self.alice, new.body(auth=password_auth("alice", "wrong", session))
        )
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["errcode"], "M_FORBIDDEN")

        r = await self.cross_signing_upload(
            self.alice, new.body(auth=password_auth("alice", PASSWORD, session))
        )
        self.assertEqual(r.code, 200, r)
        theirs = await self.query(self.bob, {self.alice.user_id: []})
        self.assertEqual(theirs["master_keys"], {self.alice.user_id: new.master.json})
        self.assertEqual(theirs["self_signing_keys"], {self.alice.user_id: new.self_signing.json})

    async def test_self_and_user_signing_keys_must_be_signed_by_the_master_key(self):
        master = CrossSigningKey(self.alice.user_id, "master")
        stranger = CrossSigningKey(self.alice.user_id, "master")
        for field, usage in (
            ("self_signing_key", "self_signing"),
            ("user_signing_key", "user_signing"),
        ):
            unsigned = CrossSigningKey(self.alice.user_id, usage)
            wrongly_signed = CrossSigningKey(self.alice.user_id, usage, stranger)
            tampered = CrossSigningKey(self.alice.user_id, usage, master)
            tampered.json["usage"] = [usage, "extra"]
            for bad in (unsigned, wrongly_signed, tampered):
                r = await self.cross_signing_upload(
                    self.alice, {"master_key": master.json, field: bad.json}
                )
                self.assertError(r, 400, "M_INVALID_SIGNATURE")
        result = await self.query(self.bob, {self.alice.user_id: []})
        self.assertEqual(result["master_keys"], {})

    async def test_keys_without_a_master_key_are_refused(self):
        r = await self.cross_signing_upload(
            self.alice, {"self_signing_key": self.keys.self_signing.json}
        )
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.cross_signing_upload(self.alice, {})
        self.assertError(r, 400, "M_MISSING_PARAM")
        # With a stored master key, its signature is what counts. Adding a key to it is a
        # change, so it takes user-interactive auth.
        r = await self.cross_signing_upload(self.alice, {"master_key": self.keys.master.json})
        self.assertEqual(r.code, 200, r)
        stranger = CrossSigningKey(self.alice.user_id, "master")
        wrongly_signed = CrossSigningKey(self.alice.user_id, "self_signing", stranger)
        r = await self.cross_signing_upload(self.alice, {"self_signing_key": wrongly_signed.json})
        self.assertEqual(r.code, 401, r)
        session = r.json["session"]
        r = await self.cross_signing_upload(
            self.alice,
            {
                "self_signing_key": wrongly_signed.json,
                "auth": password_auth("alice", PASSWORD, session),
            },
        )
        self.assertError(r, 400, "M_INVALID_SIGNATURE")
        # The session survives an operation that failed for another reason than auth.
        r = await self.cross_signing_upload(
            self.alice,
            {
                "self_signing_key": self.keys.self_signing.json,
                "auth": {"session": session},
            },
        )
        self.assertEqual(r.code, 200, r)
        result = await self.query(self.bob, {self.alice.user_id: []})
        self.assertEqual(
            result["self_signing_keys"], {self.alice.user_id: self.keys.self_signing.json}
        )

    async def test_malformed_cross_signing_keys_are_refused(self):
        master = self.keys.master
        other_public = random_key()
        cases = [
            {**master.json, "user_id": self.bob.user_id},
            {**master.json, "usage": ["self_signing"]},
            {**master.json, "usage": "master"},
            {**master.json, "keys": {}},
            {
                **master.json,
                "keys": {master.key_id: master.public, f"ed25519:{other_public}": other_public},
            },
            {**master.json, "keys": {master.key_id: other_public}},
            {**master.json, "keys": {f"curve25519:{master.public}": master.public}},
        ]
        for bad in cases:
            r = await self.cross_signing_upload(self.alice, {"master_key": bad})
            assert r.code == 400, (bad, r)
            self.assertIn(r.json["errcode"], ("M_INVALID_PARAM", "M_BAD_JSON"), r)
        # The ones the JSON shape allows are M_INVALID_PARAM.
        for bad in cases[:2] + cases[3:]:
            r = await self.cross_signing_upload(self.alice, {"master_key": bad})
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.cross_signing_upload(self.alice, {"master_key": "x"})
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_a_public_key_may_not_be_a_device_id(self):
        login = await self.login("alice", device_id=self.keys.master.public)
        self.assertEqual(login["device_id"], self.keys.master.public)
        r = await self.cross_signing_upload(self.alice, self.keys.body())
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_a_user_without_keys_cannot_use_the_endpoints_without_a_token(self):
        r = await self.request("POST", f"{KEYS}/device_signing/upload", self.keys.body())
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("POST", f"{KEYS}/signatures/upload", {})
        self.assertError(r, 401, "M_MISSING_TOKEN")


@on_both_engines
class SignatureUploadTests(KeysTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.account("alice")
        self.bob = await self.account("bob")
        self.carol = await self.account("carol")
        for account in (self.alice, self.bob):
            await self.upload_ok(account, {"device_keys": account.device.device_keys()})
        self.alice_keys = CrossSigning(self.alice.user_id)
        self.bob_keys = CrossSigning(self.bob.user_id)
        for account, keys in ((self.alice, self.alice_keys), (self.bob, self.bob_keys)):
            r = await self.cross_signing_upload(account, keys.body())
            self.assertEqual(r.code, 200, r)

    async def alice_device_as_seen_by(self, account: Account) -> dict[str, Any]:
        result = await self.query(account, {self.alice.user_id: []})
        return result["device_keys"][self.alice.user_id][self.alice.device.device_id]

    async def test_self_signing_a_device_is_seen_by_everyone(self):
        recorder = self.record_device_lists()
        signed = self.alice_keys.self_signing.sign(self.alice.device.device_keys())
        result = await self.signatures_upload(
            self.alice, {self.alice.user_id: {self.alice.device.device_id: signed}}
        )
        self.assertEqual(result, {"failures": {}})
        self.assertEqual(
            recorder.calls, [("device", self.alice.user_id, [self.alice.device.device_id])]
        )
        for viewer in (self.alice, self.bob, self.carol):
            device = await self.alice_device_as_seen_by(viewer)
            signatures = device["signatures"][self.alice.user_id]
            self.assertEqual(
                signatures[self.alice_keys.self_signing.key_id],
                signed["signatures"][self.alice.user_id][self.alice_keys.self_signing.key_id],
            )
            # Both signatures verify, the device's own and the self-signing key's.
            verify_signed_json(
                device, self.alice.user_id, get_verify_key(self.alice.device.signing_key)
            )
            verify_signed_json(
                device, self.alice.user_id, get_verify_key(self.alice_keys.self_signing.signing_key)
            )
        # Re-uploading the device's keys keeps the signature.
        await self.upload_ok(self.alice, {"device_keys": self.alice.device.device_keys()})
        device = await self.alice_device_as_seen_by(self.bob)
        self.assertIn(self.alice_keys.self_signing.key_id, device["signatures"][self.alice.user_id])

    async def test_bad_device_signatures_are_reported_per_key(self):
        device_id = self.alice.device.device_id
        good = self.alice_keys.self_signing.sign(self.alice.device.device_keys())
        wrong_key = self.alice_keys.user_signing.sign(self.alice.device.device_keys())
        forged = copy.deepcopy(good)
        forged["signatures"][self.alice.user_id][self.alice_keys.self_signing.key_id] = wrong_key[
            "signatures"
        ][self.alice.user_id][self.alice_keys.user_signing.key_id]
        changed = self.alice_keys.self_signing.sign(
            self.alice.device.device_keys(algorithms=[MEGOLM])
        )
        cases = {
            "forged": (forged, "M_INVALID_SIGNATURE"),
            "no self-signing signature": (self.alice.device.device_keys(), "M_INVALID_SIGNATURE"),
            "other contents": (changed, "M_INVALID_PARAM"),
        }
        for label, (signed, errcode) in cases.items():
            result = await self.signatures_upload(
                self.alice, {self.alice.user_id: {device_id: signed}}
            )
            failure = result["failures"][self.alice.user_id][device_id]
            self.assertEqual(failure["errcode"], errcode, label)
            self.assertIsInstance(failure["error"], str)
        unknown = await self.signatures_upload(self.alice, {self.alice.user_id: {"NODEVICE": good}})
        self.assertEqual(
            unknown["failures"][self.alice.user_id]["NODEVICE"]["errcode"], "M_NOT_FOUND"
        )
        # One bad key does not spoil the good one.
        mixed = await self.signatures_upload(
            self.alice, {self.alice.user_id: {device_id: good, "NODEVICE": good}}
        )
        self.assertEqual(list(mixed["failures"][self.alice.user_id]), ["NODEVICE"])
        device = await self.alice_device_as_seen_by(self.bob)
        self.assertIn(self.alice_keys.self_signing.key_id, device["signatures"][self.alice.user_id])

    async def test_a_device_signing_the_master_key(self):
        recorder = self.record_device_lists()
        master = self.alice_keys.master
        signed = sign_json(
            copy.deepcopy(master.json), self.alice.user_id, self.alice.device.signing_key
        )
        result = await self.signatures_upload(
            self.alice, {self.alice.user_id: {master.public: signed}}
        )
        self.assertEqual(result, {"failures": {}})
        self.assertEqual(recorder.calls, [("signing", self.alice.user_id)])
        seen = (await self.query(self.bob, {self.alice.user_id: []}))["master_keys"][
            self.alice.user_id
        ]
        verify_signed_json(seen, self.alice.user_id, get_verify_key(self.alice.device.signing_key))
        # The same signatures again (as a client sends back what it queried): fine.
        again = await self.signatures_upload(
            self.alice, {self.alice.user_id: {master.public: seen}}
        )
        self.assertEqual(again, {"failures": {}})
        # A signature by something that is not one of her devices: refused.
        stranger = Device(self.alice.user_id, "STRANGER")
        forged = sign_json(copy.deepcopy(master.json), self.alice.user_id, stranger.signing_key)
        bad = await self.signatures_upload(
            self.alice, {self.alice.user_id: {master.public: forged}}
        )
        self.assertEqual(
            bad["failures"][self.alice.user_id][master.public]["errcode"], "M_INVALID_SIGNATURE"
        )

    async def test_a_user_signing_signature_is_seen_by_the_signer_only(self):
        recorder = self.record_device_lists()
        bob_master = self.bob_keys.master
        signed = self.alice_keys.user_signing.sign(copy.deepcopy(bob_master.json))
        result = await self.signatures_upload(
            self.alice, {self.bob.user_id: {bob_master.public: signed}}
        )
        self.assertEqual(result, {"failures": {}})
        self.assertEqual(recorder.calls, [("signing", self.alice.user_id)])

        as_alice = (await self.query(self.alice, {self.bob.user_id: []}))["master_keys"][
            self.bob.user_id
        ]
        verify_signed_json(
            as_alice, self.alice.user_id, get_verify_key(self.alice_keys.user_signing.signing_key)
        )
        for viewer in (self.bob, self.carol):
            seen = (await self.query(viewer, {self.bob.user_id: []}))["master_keys"][
                self.bob.user_id
            ]
            self.assertEqual(seen, bob_master.json)
        # Nor does it travel to other servers.
        federated = await self.hs.e2e_keys.query_local_keys({self.bob.user_id: []})
        self.assertEqual(federated["master_keys"][self.bob.user_id], bob_master.json)

    async def test_bad_user_signing_signatures(self):
        bob_master = self.bob_keys.master
        # Signed by the self-signing key instead.
        wrong_key = self.alice_keys.self_signing.sign(copy.deepcopy(bob_master.json))
        forged = copy.deepcopy(bob_master.json)
        forged["signatures"] = {
            self.alice.user_id: {
                self.alice_keys.user_signing.key_id: wrong_key["signatures"][self.alice.user_id][
                    self.alice_keys.self_signing.key_id
                ]
            }
        }
        result = await self.signatures_upload(
            self.alice, {self.bob.user_id: {bob_master.public: forged}}
        )
        self.assertEqual(
            result["failures"][self.bob.user_id][bob_master.public]["errcode"],
            "M_INVALID_SIGNATURE",
        )
        # Something other than Bob's master key.
        not_master = self.alice_keys.user_signing.sign(
            copy.deepcopy(self.bob_keys.self_signing.json)
        )
        result = await self.signatures_upload(
            self.alice, {self.bob.user_id: {self.bob_keys.self_signing.public: not_master}}
        )
        self.assertEqual(
            result["failures"][self.bob.user_id][self.bob_keys.self_signing.public]["errcode"],
            "M_NOT_FOUND",
        )
        # Carol has no cross-signing keys at all, and no master key to sign.
        signed = self.alice_keys.user_signing.sign(copy.deepcopy(bob_master.json))
        result = await self.signatures_upload(
            self.carol, {self.bob.user_id: {bob_master.public: signed}}
        )
        self.assertEqual(
            result["failures"][self.bob.user_id][bob_master.public]["errcode"], "M_NOT_FOUND"
        )
        result = await self.signatures_upload(
            self.alice, {self.carol.user_id: {"whatever": signed}}
        )
        self.assertEqual(
            result["failures"][self.carol.user_id]["whatever"]["errcode"], "M_NOT_FOUND"
        )
        seen = (await self.query(self.alice, {self.bob.user_id: []}))["master_keys"][
            self.bob.user_id
        ]
        self.assertEqual(seen, bob_master.json)

    async def test_a_new_master_key_drops_the_signatures_of_the_old_one(self):
        bob_master = self.bob_keys.master
        signed = self.alice_keys.user_signing.sign(copy.deepcopy(bob_master.json))
        await self.signatures_upload(self.alice, {self.bob.user_id: {bob_master.public: signed}})
        replacement = CrossSigning(self.bob.user_id)
        r = await self.cross_signing_upload(self.bob, replacement.body())
        self.assertEqual(r.code, 401, r)
        r = await self.cross_signing_upload(
            self.bob, replacement.body(auth=password_auth("bob", PASSWORD, r.json["session"]))
        )
        self.assertEqual(r.code, 200, r)
        seen = (await self.query(self.alice, {self.bob.user_id: []}))["master_keys"][
            self.bob.user_id
        ]
        self.assertEqual(seen, replacement.master.json)

    async def test_malformed_signature_uploads(self):
        for body in (
            {self.alice.user_id: "x"},
            {self.alice.user_id: {"DEV": "x"}},
            {self.alice.user_id: ["x"]},
        ):
            r = await self.request(
                "POST", f"{KEYS}/signatures/upload", body, token=self.alice.token
            )
            self.assertError(r, 400, "M_BAD_JSON")


# ----- a real client --------------------------------------------------------------------------


@on_both_engines
class NioKeysTests(KeysTestCase):
    async def test_a_real_clients_keys_are_accepted_and_served(self):
        await self.register("alice", inhibit_login=True)
        bob = await self.account("bob")
        store = tempfile.mkdtemp(prefix="heddle-nio-store-")
        self.addCleanup(shutil.rmtree, store, True)
        client = AsyncClient(
            self.base_url,
            "@alice:test.heddle",
            store_path=store,
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
        )
        self.addCleanup(lambda: nio(client.close()))
        login = await nio(client.login(PASSWORD, device_name="nio"))
        self.assertIsInstance(login, LoginResponse)
        uploaded = await nio(client.keys_upload())
        self.assertIsInstance(uploaded, KeysUploadResponse)
        self.assertGreater(uploaded.signed_curve25519_count, 0)

        result = await self.query(bob, {"@alice:test.heddle": []})
        device = result["device_keys"]["@alice:test.heddle"][client.device_id]
        self.assertEqual(
            device["keys"][f"ed25519:{client.device_id}"],
            client.olm.account.identity_keys["ed25519"],
        )
        self.assertEqual(
            device["keys"][f"curve25519:{client.device_id}"],
            client.olm.account.identity_keys["curve25519"],
        )
        self.assertEqual(device["unsigned"], {"device_display_name": "nio"})

        claimed = await self.claim(bob, {"@alice:test.heddle": {client.device_id: SIGNED_CURVE}})
        keys = claimed["one_time_keys"]["@alice:test.heddle"][client.device_id]
        ((key_id, key),) = keys.items()
        self.assertTrue(key_id.startswith(f"{SIGNED_CURVE}:"))
        self.assertIn("@alice:test.heddle", key["signatures"])
        counts = await self.hs.e2e_keys.count_one_time_keys("@alice:test.heddle", client.device_id)
        self.assertEqual(counts[SIGNED_CURVE], uploaded.signed_curve25519_count - 1)
