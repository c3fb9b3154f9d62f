"""Canonical JSON, hashing, signing and redaction against the spec's own worked examples."""

import copy
import json
from pathlib import Path

from signedjson.key import decode_signing_key_base64, encode_verify_key_base64, get_verify_key
from signedjson.sign import sign_json
from twisted.trial import unittest

from homeserver.events.canonical import (
    CanonicalJsonError,
    check_canonical_values,
    encode_canonical_json,
    parse_json,
)
from homeserver.events.hashing import (
    check_content_hash,
    compute_event_id,
    unpadded_base64,
)
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, V1, V3, V6, V8, V9, V10, V11
from homeserver.events.signing import sign_event, verify_event_signature

VECTORS = json.loads(
    (Path(__file__).parent / "data" / "matrix-spec-test-vectors.json").read_text()
)


def _signing_key():
    key = VECTORS["signing_key"]
    version = key["key_id"].split(":")[1]
    return decode_signing_key_base64("ed25519", version, key["seed_unpadded_base64"])


class SpecVectors(unittest.TestCase):
    def test_unpadded_base64(self):
        for case in VECTORS["unpadded_base64"]:
            self.assertEqual(unpadded_base64(case["input_utf8"].encode()), case["expected"])

    def test_canonical_json(self):
        for case in VECTORS["canonical_json"]:
            with self.subTest(case["id"]):
                value = parse_json(case["input_text"])
                self.assertEqual(
                    encode_canonical_json(value).decode("utf-8"), case["expected_output"], case["id"]
                )

    def test_json_signing(self):
        key = _signing_key()
        self.assertEqual(
            encode_verify_key_base64(get_verify_key(key)),
            VECTORS["signing_key"]["derived_verify_key_unpadded_base64"],
        )
        for case in VECTORS["json_signing"]:
            signed = sign_json(copy.deepcopy(case["input"]), "domain", key)
            self.assertEqual(signed, case["expected_signed"], case["id"])

    def test_event_signing(self):
        """The spec's events are pre-v11 (they carry `origin`), so sign with v1-v10 rules."""
        key = _signing_key()
        verify_key = VECTORS["signing_key"]["derived_verify_key_unpadded_base64"]
        for case in VECTORS["event_signing"]:
            for version in (V1, V6, V9, V10):
                event = copy.deepcopy(case["input"])
                event.pop("signatures", None)
                event.pop("hashes", None)
                sign_event(event, "domain", key, version)
                expected = case["expected_signed"]
                self.assertEqual(event["hashes"], expected["hashes"], case["id"])
                self.assertEqual(event["signatures"], expected["signatures"], case["id"])
                self.assertTrue(check_content_hash(event))
                self.assertTrue(
                    verify_event_signature(event, "domain", "ed25519:1", verify_key, version)
                )

    def test_tampered_event_fails_verification_and_hash(self):
        key = _signing_key()
        verify_key = VECTORS["signing_key"]["derived_verify_key_unpadded_base64"]
        event = copy.deepcopy(VECTORS["event_signing"][1]["input"])
        event.pop("signatures", None)
        event.pop("hashes", None)
        sign_event(event, "domain", key, V10)
        event["content"]["body"] = "something else"
        # Content is redacted before signing, so the signature survives; the hash does not.
        self.assertTrue(verify_event_signature(event, "domain", "ed25519:1", verify_key, V10))
        self.assertFalse(check_content_hash(event))
        event["sender"] = "@mallory:domain"
        self.assertFalse(verify_event_signature(event, "domain", "ed25519:1", verify_key, V10))
        self.assertFalse(verify_event_signature(event, "other", "ed25519:1", verify_key, V10))


class CanonicalJsonRules(unittest.TestCase):
    def test_rejects_floats_and_big_integers(self):
        with self.assertRaises(CanonicalJsonError):
            check_canonical_values({"a": 1.5})
        with self.assertRaises(CanonicalJsonError):
            check_canonical_values({"a": [2**53]})
        check_canonical_values({"a": [2**53 - 1, -(2**53 - 1), True, None, "x"]})

    def test_rejects_nan(self):
        with self.assertRaises(CanonicalJsonError):
            parse_json('{"a": NaN}')


class Redaction(unittest.TestCase):
    EVENT = {
        "event_id": "$e",
        "type": "m.room.member",
        "room_id": "!r:x",
        "sender": "@a:x",
        "state_key": "@a:x",
        "origin": "x",
        "membership": "join",
        "prev_state": [],
        "content": {
            "membership": "join",
            "displayname": "A",
            "join_authorised_via_users_server": "@b:x",
            "third_party_invite": {"signed": {"mxid": "@a:x"}, "display_name": "a"},
        },
        "unsigned": {"age_ts": 5, "other": 1},
        "hashes": {},
        "signatures": {},
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 1,
    }

    def test_member_per_version(self):
        self.assertEqual(prune_event_dict(self.EVENT, V1)["content"], {"membership": "join"})
        self.assertEqual(
            prune_event_dict(self.EVENT, V9)["content"],
            {"membership": "join", "join_authorised_via_users_server": "@b:x"},
        )
        v11 = prune_event_dict(self.EVENT, V11)
        self.assertEqual(
            v11["content"],
            {
                "membership": "join",
                "join_authorised_via_users_server": "@b:x",
                "third_party_invite": {"signed": {"mxid": "@a:x"}},
            },
        )
        for key in ("origin", "membership", "prev_state"):
            self.assertNotIn(key, v11)
            self.assertIn(key, prune_event_dict(self.EVENT, V10))
        self.assertEqual(v11["unsigned"], {"age_ts": 5})

    def test_other_types(self):
        def content(event_type, content, version):
            return prune_event_dict({"type": event_type, "content": content}, version)["content"]

        self.assertEqual(content("m.room.aliases", {"aliases": ["#a:x"]}, V1), {"aliases": ["#a:x"]})
        self.assertEqual(content("m.room.aliases", {"aliases": ["#a:x"]}, V6), {})
        self.assertEqual(content("m.room.join_rules", {"join_rule": "restricted", "allow": []}, V6), {"join_rule": "restricted"})
        self.assertEqual(content("m.room.join_rules", {"join_rule": "restricted", "allow": []}, V8), {"join_rule": "restricted", "allow": []})
        self.assertEqual(content("m.room.create", {"creator": "@a:x", "m.federate": False}, V10), {"creator": "@a:x"})
        self.assertEqual(content("m.room.create", {"m.federate": False, "x": 1}, V11), {"m.federate": False, "x": 1})
        self.assertEqual(content("m.room.power_levels", {"invite": 5, "ban": 1}, V10), {"ban": 1})
        self.assertEqual(content("m.room.power_levels", {"invite": 5, "ban": 1}, V11), {"invite": 5, "ban": 1})
        self.assertEqual(content("m.room.redaction", {"redacts": "$x", "reason": "r"}, V10), {})
        self.assertEqual(content("m.room.redaction", {"redacts": "$x", "reason": "r"}, V11), {"redacts": "$x"})
        self.assertEqual(content("m.room.message", {"body": "hi"}, V11), {})


class EventIds(unittest.TestCase):
    def test_reference_hash_ids(self):
        event = {"type": "m.room.message", "content": {"body": "x"}, "room_id": "!r:x", "sender": "@a:x",
                 "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [], "hashes": {"sha256": "abc"}}
        v3_id = compute_event_id(event, V3)
        v4_id = compute_event_id(event, KNOWN_ROOM_VERSIONS["4"])
        self.assertTrue(v3_id.startswith("$") and v4_id.startswith("$"))
        self.assertEqual(len(v4_id), 44)
        self.assertEqual(v3_id[1:].replace("+", "-").replace("/", "_"), v4_id[1:])
        # Content that redaction removes does not change the ID; protected fields do.
        changed = dict(event, content={"body": "y"})
        self.assertEqual(compute_event_id(changed, V11), compute_event_id(event, V11))
        self.assertNotEqual(compute_event_id(dict(event, depth=2), V11), compute_event_id(event, V11))
        # Signatures and unsigned data are not covered.
        self.assertEqual(
            compute_event_id(dict(event, signatures={"x": {}}, unsigned={"age": 1}), V11),
            compute_event_id(event, V11),
        )
