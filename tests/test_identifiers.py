"""Room and event ID checks (appendices: "Identifier Grammar"), shared by every endpoint that
takes one in its path or body."""

from __future__ import annotations

from twisted.trial import unittest

from homeserver.errors import MatrixError
from homeserver.identifiers import check_event_id, check_room_id


class RoomAndEventIdTests(unittest.TestCase):
    def assertInvalid(self, check: object, value: object) -> None:
        with self.assertRaises(MatrixError) as cm:
            check(value)  # type: ignore[operator]
        self.assertEqual((cm.exception.http_code, cm.exception.errcode), (400, "M_INVALID_PARAM"))

    def test_room_ids_of_every_room_version_are_accepted(self) -> None:
        for room_id in (
            "!opaque:example.org",  # v1-v11
            "!opaque:[::1]:8448",
            "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM",  # v12: no server part
            "!x",
            "!" + "a" * 254,  # 255 bytes
        ):
            check_room_id(room_id)

    def test_malformed_room_ids_are_refused(self) -> None:
        for room_id in (
            "",
            "!",
            "#alias:example.org",
            "$event:example.org",
            "opaque:example.org",
            "!" + "a" * 255,  # 256 bytes
            "!" + "é" * 128,  # 257 bytes in 129 characters
            None,
            5,
        ):
            self.assertInvalid(check_room_id, room_id)

    def test_event_ids_of_every_room_version_are_accepted(self) -> None:
        for event_id in (
            "$opaque:example.org",  # v1-v2
            "$acR1l0raoZnm60CBwAVgqbZqoO/mYU81xysh1u7XcJk",  # v3
            "$acR1l0raoZnm60CBwAVgqbZqoO_mYU81xysh1u7XcJk",  # v4+
            "$" + "a" * 254,
        ):
            check_event_id(event_id)

    def test_malformed_event_ids_are_refused(self) -> None:
        for event_id in ("", "$", "!room:example.org", "event", "$" + "a" * 255, None, ["$x"]):
            self.assertInvalid(check_event_id, event_id)
