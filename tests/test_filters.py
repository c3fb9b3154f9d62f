"""Filters: the model (parsing, validation, matching) and POST/GET /user/{userId}/filter."""

from __future__ import annotations

import json
from urllib.parse import quote

from nio import AsyncClient, UploadFilterResponse
from twisted.trial import unittest

from homeserver.errors import Codes, MatrixError
from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.filtering import (
    EventFilter,
    Filter,
    RoomEventFilter,
    only_fields,
    split_field_path,
    type_matches,
)
from tests.harness import nio, on_both_engines
from tests.history_helpers import ALICE, BOB, HistoryTestCase

ROOM = "!room:test.heddle"
OTHER_ROOM = "!other:test.heddle"


def event(event_type: str = "m.room.message", sender: str = ALICE, room_id: str = ROOM, **content) -> Event:
    pdu = {
        "type": event_type,
        "sender": sender,
        "room_id": room_id,
        "content": content,
        "origin_server_ts": 0,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
    }
    return Event(pdu, KNOWN_ROOM_VERSIONS["11"], event_id="$e")


class FilterModel(unittest.TestCase):
    def test_an_empty_filter_allows_everything(self):
        flt = Filter.from_json({})
        self.assertEqual(flt, Filter.default())
        for part in (flt.room.timeline, flt.room.state, flt.room.ephemeral, flt.room.account_data, flt.presence, flt.account_data):
            self.assertTrue(part.allows(event()))
            self.assertTrue(part.allows({"type": "m.typing", "content": {}}))
        self.assertTrue(flt.room.allows_room(ROOM))
        self.assertEqual(flt.event_format, "client")
        self.assertIsNone(flt.event_fields)
        self.assertFalse(flt.room.include_leave)
        self.assertEqual(flt.room.timeline.limit_or(10), 10)

    def test_the_spec_example_parses(self):
        flt = Filter.from_json({
            "room": {
                "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
                "timeline": {"limit": 10, "types": ["m.room.message"], "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]},
                "ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]},
            },
            "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
            "event_format": "client",
            "event_fields": ["type", "content", "sender"],
        })
        self.assertEqual(flt.room.timeline.limit, 10)
        self.assertTrue(flt.room.state.allows(event("m.room.name")))
        self.assertFalse(flt.room.state.allows(event("org.example.custom")))
        self.assertFalse(flt.room.timeline.allows(event(sender="@spam:example.com")))
        self.assertFalse(flt.room.timeline.allows(event(room_id="!726s6s6q:example.com")))
        self.assertTrue(flt.presence.matches("m.presence", sender="@bob:example.com"))
        self.assertFalse(flt.presence.matches("m.presence", sender="@alice:example.com"))
        self.assertEqual(flt.event_fields, ("type", "content", "sender"))

    def test_wildcards(self):
        self.assertTrue(type_matches("m.room.message", "m.*"))
        self.assertTrue(type_matches("m.room.message", "*"))
        self.assertTrue(type_matches("m.room.message", "m.*.message"))
        self.assertTrue(type_matches("m.room.message", "m.room.message"))
        self.assertFalse(type_matches("m.room.message", "m.room"))
        self.assertFalse(type_matches("m.room.message", "m.room.mess"))
        self.assertFalse(type_matches("xm.room", "m.*"))
        # Only `*` is special: regex characters are literal.
        self.assertFalse(type_matches("mxroom", "m.room"))
        self.assertTrue(type_matches("a+b", "a+b"))
        self.assertFalse(type_matches("aab", "a+b"))
        self.assertFalse(type_matches("m.room.message\nx", "m.room.message"))

    def test_exclusions_win_over_inclusions(self):
        flt = RoomEventFilter.from_json({
            "types": ["m.*"], "not_types": ["m.room.member"],
            "senders": [ALICE, BOB], "not_senders": [BOB],
            "rooms": [ROOM, OTHER_ROOM], "not_rooms": [OTHER_ROOM],
        })
        self.assertTrue(flt.allows(event()))
        self.assertFalse(flt.allows(event("m.room.member")))
        self.assertFalse(flt.allows(event("org.custom")))
        self.assertFalse(flt.allows(event(sender=BOB)))
        self.assertFalse(flt.allows(event(sender="@carol:test.heddle")))
        self.assertFalse(flt.allows(event(room_id=OTHER_ROOM)))
        self.assertFalse(flt.allows(event(room_id="!third:test.heddle")))
        kept, dropped = event(), event(sender=BOB)
        self.assertEqual(flt.filter_events([kept, dropped, kept]), [kept, kept])

    def test_empty_inclusion_lists_allow_nothing(self):
        self.assertFalse(EventFilter.from_json({"types": []}).allows(event()))
        self.assertFalse(EventFilter.from_json({"senders": []}).allows(event()))
        self.assertTrue(EventFilter.from_json({"not_types": []}).allows(event()))

    def test_contains_url(self):
        with_url = event(url="mxc://x/y", body="pic")
        without = event(body="text")
        bad_url = event(url=5)
        only_urls = RoomEventFilter.from_json({"contains_url": True})
        no_urls = RoomEventFilter.from_json({"contains_url": False})
        self.assertEqual(only_urls.filter_events([with_url, without, bad_url]), [with_url])
        self.assertEqual(no_urls.filter_events([with_url, without, bad_url]), [without, bad_url])

    def test_json_dicts_are_matched_too(self):
        flt = RoomEventFilter.from_json({"types": ["m.receipt"], "rooms": [ROOM]})
        self.assertTrue(flt.allows({"type": "m.receipt", "room_id": ROOM, "content": {}}))
        self.assertFalse(flt.allows({"type": "m.typing", "room_id": ROOM, "content": {}}))
        self.assertFalse(flt.allows({"type": "m.receipt", "content": "not an object"}))

    def test_room_filter_and_flags(self):
        flt = Filter.from_json({
            "room": {
                "rooms": [ROOM], "not_rooms": [OTHER_ROOM], "include_leave": True,
                "state": {"lazy_load_members": True, "include_redundant_members": True},
                "timeline": {"unread_thread_notifications": True, "limit": 0},
            }
        })
        self.assertTrue(flt.room.allows_room(ROOM))
        self.assertFalse(flt.room.allows_room(OTHER_ROOM))
        self.assertFalse(flt.room.allows_room("!third:test.heddle"))
        self.assertTrue(flt.room.include_leave)
        self.assertTrue(flt.lazy_load_members)
        self.assertTrue(flt.include_redundant_members)
        self.assertTrue(flt.room.timeline.unread_thread_notifications)
        self.assertEqual(flt.room.timeline.limit_or(10), 0)
        self.assertEqual(RoomEventFilter.from_json({"limit": 5000}).limit_or(10, maximum=100), 100)

    def test_nulls_count_as_absent_and_unknown_keys_are_ignored(self):
        flt = Filter.from_json({"event_fields": None, "presence": None, "room": {"timeline": None, "rooms": None}, "org.example": 1})
        self.assertEqual(flt, Filter.default())

    def test_malformed_filters_are_refused(self):
        bad = [
            [],
            "filter",
            {"event_format": "xml"},
            {"event_fields": "content"},
            {"event_fields": [1]},
            {"presence": []},
            {"room": "all"},
            {"room": {"rooms": "!a:b"}},
            {"room": {"rooms": ["a:b"]}},
            {"room": {"include_leave": "true"}},
            {"room": {"timeline": {"limit": -1}}},
            {"room": {"timeline": {"limit": 1.5}}},
            {"room": {"timeline": {"limit": True}}},
            {"room": {"timeline": {"types": [None]}}},
            {"room": {"timeline": {"senders": ["bob"]}}},
            {"room": {"state": {"not_senders": [1]}}},
            {"room": {"state": {"lazy_load_members": 1}}},
            {"room": {"ephemeral": {"contains_url": "no"}}},
            {"account_data": {"not_types": "m.*"}},
        ]
        for raw in bad:
            with self.assertRaises(MatrixError, msg=repr(raw)) as cm:
                Filter.from_json(raw)
            self.assertEqual((cm.exception.http_code, cm.exception.errcode), (400, Codes.BAD_JSON))
        with self.assertRaises(MatrixError) as cm:
            RoomEventFilter.from_json({"types": "x"}, errcode=Codes.INVALID_PARAM)
        self.assertEqual(cm.exception.errcode, Codes.INVALID_PARAM)
        self.assertIn("filter.types", cm.exception.message)

    def test_event_fields(self):
        self.assertEqual(split_field_path("content.body"), ["content", "body"])
        self.assertEqual(split_field_path(r"content.m\.relates_to"), ["content", "m.relates_to"])
        self.assertEqual(split_field_path(r"content.m\\foo"), ["content", "m\\foo"])
        self.assertEqual(split_field_path(r"content.a\xb"), ["content", r"a\xb"])
        client_event = {
            "type": "m.room.message",
            "sender": ALICE,
            "content": {"body": "hi", "m.relates_to": {"rel_type": "x"}, "msgtype": "m.text"},
            "unsigned": {"age": 1},
        }
        self.assertEqual(
            only_fields(client_event, ["type", "content.body", r"content.m\.relates_to", "content.missing", "type.deeper"]),
            {"type": "m.room.message", "content": {"body": "hi", "m.relates_to": {"rel_type": "x"}}},
        )
        flt = Filter.from_json({"event_fields": ["sender"], "event_format": "federation"})
        self.assertEqual(flt.format_event(client_event, {"sender": BOB, "depth": 3}), {"sender": BOB})
        self.assertEqual(Filter.default().format_event(client_event), client_event)


@on_both_engines
class FilterApi(HistoryTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice", "bob")

    def path(self, user_id: str, filter_id: str | None = None) -> str:
        base = f"/_matrix/client/v3/user/{quote(user_id, safe='')}/filter"
        return base if filter_id is None else f"{base}/{quote(filter_id, safe='')}"

    async def test_upload_and_download_a_filter(self):
        body = {"room": {"timeline": {"limit": 5, "types": ["m.room.message"]}}, "event_format": "client", "org.example.extra": [1, 2]}
        created = await self.request("POST", self.path(ALICE), body, token=self.tokens[ALICE])
        self.assertEqual(created.code, 200, created)
        filter_id = created.json["filter_id"]
        self.assertIsInstance(filter_id, str)
        self.assertFalse(filter_id.startswith("{"))
        fetched = await self.request("GET", self.path(ALICE, filter_id), token=self.tokens[ALICE])
        self.assertEqual(fetched.code, 200, fetched)
        self.assertEqual(fetched.json, body)

    async def test_same_filter_same_id_and_ids_are_per_user(self):
        first = await self.request("POST", self.path(ALICE), {"room": {"include_leave": True}}, token=self.tokens[ALICE])
        second = await self.request("POST", self.path(ALICE), {"presence": {"types": []}}, token=self.tokens[ALICE])
        again = await self.request("POST", self.path(ALICE), {"room": {"include_leave": True}}, token=self.tokens[ALICE])
        self.assertNotEqual(first.json["filter_id"], second.json["filter_id"])
        self.assertEqual(first.json["filter_id"], again.json["filter_id"])
        bobs = await self.request("POST", self.path(BOB), {"presence": {"types": []}}, token=self.tokens[BOB])
        # Bob's first filter has the same number as Alice's first, but it is his own.
        self.assertEqual(bobs.json["filter_id"], first.json["filter_id"])
        fetched = await self.request("GET", self.path(BOB, bobs.json["filter_id"]), token=self.tokens[BOB])
        self.assertEqual(fetched.json, {"presence": {"types": []}})

    async def test_other_users_filters_are_forbidden(self):
        created = await self.request("POST", self.path(ALICE), {}, token=self.tokens[ALICE])
        filter_id = created.json["filter_id"]
        self.assertError(await self.request("GET", self.path(ALICE, filter_id), token=self.tokens[BOB]), 403, "M_FORBIDDEN")
        self.assertError(await self.request("POST", self.path(ALICE), {}, token=self.tokens[BOB]), 403, "M_FORBIDDEN")
        self.assertError(await self.request("POST", self.path(ALICE), {}), 401, "M_MISSING_TOKEN")

    async def test_unknown_filters_are_not_found(self):
        for filter_id in ("0", "999", "abc", "-1", "1" * 40):
            response = await self.request("GET", self.path(ALICE, filter_id), token=self.tokens[ALICE])
            self.assertError(response, 404, "M_NOT_FOUND")

    async def test_malformed_uploads_are_refused(self):
        self.assertError(
            await self.request("POST", self.path(ALICE), raw=b"{nope", token=self.tokens[ALICE]), 400, "M_NOT_JSON"
        )
        self.assertError(
            await self.request("POST", self.path(ALICE), [1, 2], token=self.tokens[ALICE]), 400, "M_BAD_JSON"
        )
        for body in ({"room": {"timeline": {"limit": "ten"}}}, {"event_format": "xml"}, {"room": {"rooms": [1]}}):
            response = await self.request("POST", self.path(ALICE), body, token=self.tokens[ALICE])
            self.assertError(response, 400, "M_BAD_JSON")

    async def test_nio_upload_filter(self):
        client = AsyncClient(self.base_url, ALICE)
        client.access_token = self.tokens[ALICE]
        client.user_id = ALICE
        self.addCleanup(lambda: nio(client.close()))
        response = await nio(client.upload_filter(room={"timeline": {"limit": 3}, "state": {"lazy_load_members": True}}))
        self.assertIsInstance(response, UploadFilterResponse)
        parsed = await self.hs.filtering.get_filter(ALICE, response.filter_id)
        self.assertEqual(parsed.room.timeline.limit, 3)
        self.assertTrue(parsed.lazy_load_members)

    async def test_the_same_definition_resolves_to_one_shared_filter(self):
        """Held subscriptions keep their filter: the same definition, inline (in any key
        order) or stored by any user, gives one immutable `Filter`, not a parse each."""
        filtering = self.hs.filtering
        definition = {"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}}
        inline = await filtering.resolve_filter(ALICE, json.dumps(definition))
        reordered = await filtering.resolve_filter(
            BOB, '{"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}}'
        )
        self.assertIs(reordered, inline)
        for user in (ALICE, BOB):
            created = await self.request("POST", self.path(user), definition, token=self.tokens[user])
            self.assertIs(await filtering.resolve_filter(user, created.json["filter_id"]), inline)
        other = await filtering.resolve_filter(ALICE, '{"room": {"timeline": {"limit": 2}}}')
        self.assertEqual(other.room.timeline.limit, 2)

    async def test_resolving_the_filter_query_parameter(self):
        filtering = self.hs.filtering
        created = await self.request("POST", self.path(ALICE), {"room": {"timeline": {"limit": 7}}}, token=self.tokens[ALICE])
        by_id = await filtering.resolve_filter(ALICE, created.json["filter_id"])
        self.assertEqual(by_id.room.timeline.limit, 7)
        inline = await filtering.resolve_filter(ALICE, '{"room": {"timeline": {"limit": 4}}}')
        self.assertEqual(inline.room.timeline.limit, 4)
        self.assertEqual(await filtering.resolve_filter(ALICE, None), Filter.default())
        room_filter = await filtering.resolve_room_event_filter(ALICE, created.json["filter_id"])
        self.assertEqual(room_filter.limit, 7)
        for bad in ("{", '{"room": 1}', "12345", "[]"):
            with self.assertRaises(MatrixError) as cm:
                await filtering.resolve_filter(ALICE, bad)
            self.assertEqual((cm.exception.http_code, cm.exception.errcode), (400, "M_INVALID_PARAM"))
        with self.assertRaises(MatrixError):
            await filtering.resolve_filter(BOB, created.json["filter_id"])
