"""`dumps_sync` gives exactly `json.dumps`'s text, with shared room sections spliced in."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from homeserver.sync.encoding import SharedJoinedRoom, SharedPart, dumps_sync

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


def reference(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def shared_part(body: str) -> SharedPart:
    return SharedPart({
        "timeline": {"events": [{"content": {"body": body}, "unsigned": {"age": 5}}],
                     "limited": False, "prev_batch": "t1-2"},
        "state": {"events": []},
        "summary": {"m.heroes": ["@a:x"]},
    })


def response(rooms: dict[str, Any]) -> dict[str, Any]:
    return {
        "next_batch": "s1_2_3",
        "rooms": {"join": rooms, "invite": {}, "leave": {}, "knock": {}},
        "account_data": {"events": []},
        "device_one_time_keys_count": {"signed_curve25519": 0},
    }


class DumpsSyncTests(unittest.TestCase):
    @given(st.text(), json_values, json_values)
    def test_shared_rooms_encode_as_json_dumps_does(
        self, body: str, ephemeral: Any, extra: Any
    ) -> None:
        part = shared_part(body)
        first = SharedJoinedRoom(part, {"ephemeral": {"events": []}, "account_data": {"events": []}})
        second = SharedJoinedRoom(part, {"ephemeral": {"events": []}, "account_data": {"events": []}})
        # What later sections fill into a viewer's own blocks, or add to it.
        second["ephemeral"]["events"] = [ephemeral]
        second["unread_notifications"] = extra
        plain = {"timeline": {"events": [], "limited": False}, "state": {"events": []}}
        whole = response({"!a:x": first, "!b\u00e9:x": second, "!c:x": plain})
        self.assertEqual(dumps_sync(whole), reference(whole))
        # Encoded once, spliced into both.
        self.assertIs(part._text, part.text())

    def test_text_like_the_placeholder_is_left_alone(self) -> None:
        part = shared_part('"heddle-shared-room-0"')
        room = SharedJoinedRoom(part, {"ephemeral": {"events": ["heddle-shared-room-0"]}})
        plain = {"heddle-shared-room-0": "heddle-shared-room-1", "x": '"heddle-shared-room-0"'}
        whole = response({"heddle-shared-room-0": plain, "!a:x": room, "!b:x": room})
        self.assertEqual(dumps_sync(whole), reference(whole))

    def test_a_replaced_shared_value_is_encoded_as_it_is_now(self) -> None:
        part = shared_part("hi")
        part.text()
        room = SharedJoinedRoom(part, {"ephemeral": {"events": []}})
        room["timeline"] = {"events": [], "limited": True}
        whole = response({"!a:x": room})
        self.assertEqual(dumps_sync(whole), reference(whole))
        self.assertIn('"limited":true', dumps_sync(whole))

    def test_a_shared_room_reads_as_a_plain_dict(self) -> None:
        part = shared_part("hi")
        room = SharedJoinedRoom(part, {"ephemeral": {"events": []}})
        self.assertEqual(list(room), ["timeline", "state", "summary", "ephemeral"])
        self.assertEqual(room["timeline"], part.values["timeline"])
        self.assertEqual(json.loads(dumps_sync(response({"!a:x": room})))["rooms"]["join"]["!a:x"],
                         json.loads(reference(room)))

    @given(json_values)
    def test_responses_without_shared_rooms(self, value: Any) -> None:
        for whole in (response({"!a:x": {"x": value}}), {"next_batch": "s1", "other": value}):
            self.assertEqual(dumps_sync(whole), reference(whole))
