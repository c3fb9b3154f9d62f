"""Signed JSON objects of end-to-end encryption (homeserver/e2e/signatures.py): pure
functions, no server."""

from __future__ import annotations

import base64
import copy
import os

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.trial import unittest

from homeserver.e2e.signatures import (
    InvalidKey,
    add_signatures,
    cross_signing_public_key,
    decode_public_key,
    is_signed_by,
    signatures_of,
    verify_key,
    without_signatures,
)

ALICE = "@alice:test.heddle"


def unpadded(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def signed_device(device_id: str = "DEV") -> tuple[object, str, dict]:
    key = generate_signing_key(device_id)
    public = encode_verify_key_base64(get_verify_key(key))
    obj = {
        "user_id": ALICE,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {
            f"ed25519:{device_id}": public,
            f"curve25519:{device_id}": unpadded(os.urandom(32)),
        },
    }
    return key, public, sign_json(obj, ALICE, key)


class PublicKeyTests(unittest.TestCase):
    def test_32_bytes_of_unpadded_base64(self):
        raw = os.urandom(32)
        self.assertEqual(decode_public_key(unpadded(raw)), raw)

    def test_wrong_length_padding_or_type_is_refused(self):
        for bad in (
            unpadded(os.urandom(31)),
            unpadded(os.urandom(33)),
            base64.b64encode(os.urandom(32)).decode(),
            "not base64!",
            42,
            None,
        ):
            with self.assertRaises(InvalidKey, msg=repr(bad)):
                decode_public_key(bad)

    def test_verify_key_needs_an_ed25519_key_id(self):
        public = unpadded(os.urandom(32))
        self.assertEqual(verify_key("ed25519:DEV", public).version, "DEV")
        for key_id in ("curve25519:DEV", "ed25519:", "ed25519"):
            with self.assertRaises(InvalidKey):
                verify_key(key_id, public)


class SignatureTests(unittest.TestCase):
    def test_a_device_signed_by_its_own_key_verifies(self):
        _, public, obj = signed_device()
        self.assertTrue(is_signed_by(obj, ALICE, "ed25519:DEV", public))

    def test_unsigned_is_not_covered(self):
        _, public, obj = signed_device()
        obj["unsigned"] = {"device_display_name": "phone"}
        self.assertTrue(is_signed_by(obj, ALICE, "ed25519:DEV", public))

    def test_a_changed_object_does_not_verify(self):
        _, public, obj = signed_device()
        obj["algorithms"] = ["m.megolm.v1.aes-sha2"]
        self.assertFalse(is_signed_by(obj, ALICE, "ed25519:DEV", public))

    def test_another_key_does_not_verify(self):
        _, _, obj = signed_device()
        _, other_public, _ = signed_device()
        self.assertFalse(is_signed_by(obj, ALICE, "ed25519:DEV", other_public))

    def test_missing_or_malformed_signatures_do_not_verify(self):
        _, public, obj = signed_device()
        for signatures in (
            None,
            {},
            {ALICE: {}},
            {ALICE: {"ed25519:DEV": 5}},
            {"@bob:x": obj["signatures"][ALICE]},
            "x",
        ):
            bad = copy.deepcopy(obj)
            bad["signatures"] = signatures
            self.assertFalse(is_signed_by(bad, ALICE, "ed25519:DEV", public), signatures)
        bad = copy.deepcopy(obj)
        bad["signatures"][ALICE]["ed25519:DEV"] = "garbage"
        self.assertFalse(is_signed_by(bad, ALICE, "ed25519:DEV", public))

    def test_a_malformed_public_key_does_not_verify(self):
        _, _, obj = signed_device()
        self.assertFalse(is_signed_by(obj, ALICE, "ed25519:DEV", "short"))


class CrossSigningKeyTests(unittest.TestCase):
    def test_one_key_named_after_itself(self):
        public = unpadded(os.urandom(32))
        key = {"user_id": ALICE, "usage": ["master"], "keys": {f"ed25519:{public}": public}}
        self.assertEqual(cross_signing_public_key(key), (f"ed25519:{public}", public))

    def test_malformed_keys_are_refused(self):
        public, other = unpadded(os.urandom(32)), unpadded(os.urandom(32))
        for keys in (
            {},
            {f"ed25519:{public}": public, f"ed25519:{other}": other},
            {f"ed25519:{public}": other},
            {f"curve25519:{public}": public},
            {"ed25519:short": "short"},
            None,
        ):
            with self.assertRaises(InvalidKey, msg=repr(keys)):
                cross_signing_public_key({"user_id": ALICE, "usage": ["master"], "keys": keys})


class SignatureMergeTests(unittest.TestCase):
    def test_add_signatures_keeps_the_existing_ones(self):
        obj = {"keys": {}, "signatures": {ALICE: {"ed25519:DEV": "a"}}}
        merged = add_signatures(obj, [(ALICE, "ed25519:SSK", "b"), ("@bob:x", "ed25519:USK", "c")])
        self.assertEqual(
            merged["signatures"],
            {ALICE: {"ed25519:DEV": "a", "ed25519:SSK": "b"}, "@bob:x": {"ed25519:USK": "c"}},
        )
        # The original is left alone.
        self.assertEqual(obj["signatures"], {ALICE: {"ed25519:DEV": "a"}})

    def test_add_signatures_replaces_malformed_signatures(self):
        # A remote server's key may carry anything there; merging must not fail on it.
        for garbage in ("x", 1, [0], None):
            merged = add_signatures({"signatures": garbage}, [(ALICE, "ed25519:USK", "c")])
            self.assertEqual(merged["signatures"], {ALICE: {"ed25519:USK": "c"}})

    def test_signatures_of_and_without_signatures(self):
        obj = {"a": 1, "unsigned": {}, "signatures": {ALICE: {"ed25519:X": "s", "bad": 3}}}
        self.assertEqual(signatures_of(obj, ALICE), {"ed25519:X": "s"})
        self.assertEqual(signatures_of(obj, "@bob:x"), {})
        self.assertEqual(without_signatures(obj), {"a": 1})
