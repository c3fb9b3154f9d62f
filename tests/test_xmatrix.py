"""The X-Matrix Authorization header: signing, parsing, quoting, malformed values."""

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from twisted.trial import unittest

from federation.xmatrix import XMatrixAuth, parse_authorization, request_json, sign_request


class RequestJson(unittest.TestCase):
    def test_content_and_destination_are_included_when_given(self):
        self.assertEqual(
            request_json("PUT", "/_matrix/x?a=1", "o.example", "d.example", {"k": 1}),
            {
                "method": "PUT",
                "uri": "/_matrix/x?a=1",
                "origin": "o.example",
                "destination": "d.example",
                "content": {"k": 1},
            },
        )

    def test_no_content_and_no_destination_are_left_out(self):
        self.assertEqual(
            request_json("GET", "/p", "o.example", None, None),
            {"method": "GET", "uri": "/p", "origin": "o.example"},
        )


class SignAndParse(unittest.TestCase):
    def test_round_trip_signature_verifies(self):
        key = generate_signing_key("k1")
        header = sign_request(key, "o.example", "d.example:8448", "POST", "/_matrix/a?b=c%20d", {"x": [1]})
        self.assertTrue(header.startswith('X-Matrix origin="o.example",destination="d.example:8448"'))
        auth = parse_authorization(header)
        self.assertEqual(auth, XMatrixAuth("o.example", "d.example:8448", "ed25519:k1", auth.signature))
        signed = request_json("POST", "/_matrix/a?b=c%20d", auth.origin, auth.destination, {"x": [1]})
        signed["signatures"] = {auth.origin: {auth.key_id: auth.signature}}
        verify_signed_json(signed, "o.example", get_verify_key(key))  # raises if bad

    def test_signature_does_not_cover_a_different_uri(self):
        key = generate_signing_key("k1")
        auth = parse_authorization(sign_request(key, "o", "d", "GET", "/a", None))
        signed = request_json("GET", "/b", "o", "d", None)
        signed["signatures"] = {"o": {auth.key_id: auth.signature}}
        with self.assertRaises(SignatureVerifyException):
            verify_signed_json(signed, "o", get_verify_key(key))

    def test_unquoted_values_spaces_and_case_insensitive_names(self):
        auth = parse_authorization(
            "X-Matrix  ORIGIN=o.example:8448 ,\tDestination = \"d.example\" , Key=ed25519:a_1,sig=ab/c+d"
        )
        self.assertEqual(auth, XMatrixAuth("o.example:8448", "d.example", "ed25519:a_1", "ab/c+d"))

    def test_scheme_is_case_insensitive(self):
        auth = parse_authorization('x-matrix origin="o",key="ed25519:a",sig="s"')
        self.assertEqual(auth.origin, "o")

    def test_backslash_escapes_in_quoted_values(self):
        auth = parse_authorization(r'X-Matrix origin="o\"x\\y",key="ed25519:a",sig="s"')
        self.assertEqual(auth.origin, 'o"x\\y')

    def test_destination_is_optional_and_unknown_params_ignored(self):
        auth = parse_authorization('X-Matrix origin="o",key="ed25519:a",sig="s",extra="z"')
        self.assertIsNone(auth.destination)
        self.assertEqual(auth.signature, "s")

    def test_malformed_headers_are_rejected(self):
        bad = [
            "",
            "Bearer abc",
            "X-Matrix",
            "X-Matrix ",
            'X-Matrixorigin="o",key="ed25519:a",sig="s"',
            'X-Matrix origin="o",key="ed25519:a"',  # no sig
            'X-Matrix key="ed25519:a",sig="s"',  # no origin
            'X-Matrix origin="o",sig="s"',  # no key
            'X-Matrix origin="o",key="nocolon",sig="s"',
            'X-Matrix origin="o,key="ed25519:a",sig="s"',  # unterminated
            'X-Matrix origin="o" key="ed25519:a",sig="s"',  # no comma
            'X-Matrix origin="o",key="ed25519:a",sig="s",',  # trailing comma
            'X-Matrix origin=,key="ed25519:a",sig="s"',
            'X-Matrix origin="o",origin="p",key="ed25519:a",sig="s"',
            'X-Matrix origin="",key="ed25519:a",sig="s"',
            'X-Matrix ="o",key="ed25519:a",sig="s"',
            'X-Matrix origin="o",key="ed25519:a",sig="s\\',
            "X-Matrix origin=o;x,key=ed25519:a,sig=s",
        ]
        for value in bad:
            with self.assertRaises(ValueError, msg=value):
                parse_authorization(value)
