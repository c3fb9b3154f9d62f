"""Server-side search (client-server API "Server Side Search", POST /search) over real HTTP
on both engines: what is indexed, ordering and pagination, filters, groups, context,
visibility, ignored users, redactions, and bad input."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from nio import RoomCreateResponse, RoomSendResponse
from twisted.trial import unittest

from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.search import searchable_text
from homeserver.rooms.search_request import SearchBatch, search_words
from storage.migrations import migrations_for, split_statements
from tests.harness import Response, nio, on_both_engines
from tests.history_helpers import ALICE, BOB, CAROL, HistoryTestCase
from tests.room_helpers import RoomTestCase

SEARCH = "/_matrix/client/v3/search"


def criteria(term: str, **extra: Any) -> dict[str, Any]:
    return {"search_categories": {"room_events": {"search_term": term, **extra}}}


def found_ids(response: Response) -> list[str]:
    assert response.code == 200, response
    return [
        r["result"]["event_id"]
        for r in response.json["search_categories"]["room_events"]["results"]
    ]


class SearchTestCase(HistoryTestCase):
    async def search(
        self, user_id: str, body: Any, next_batch: str | None = None, raw: bytes | None = None
    ) -> Response:
        path = SEARCH
        if next_batch is not None:
            path += "?next_batch=" + quote(next_batch, safe="")
        return await self.request("POST", path, body, raw=raw, token=self.tokens[user_id])

    async def index_rows(self, room_id: str) -> int:
        row = await self.hs.db.run_interaction(
            "count",
            lambda txn: txn.select_one(
                "SELECT COUNT(*) FROM event_search WHERE room_id = ?", (room_id,)
            ),
        )
        return int(row[0])


@on_both_engines
class SearchResults(SearchTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice", "bob", "carol")

    async def test_finds_bodies_names_and_topics_by_key(self):
        room = await self.make_room()
        name = await self.hs.event_creator.send(
            room, ALICE, "m.room.name", {"name": "Planning corner"}, state_key=""
        )
        topic = await self.hs.event_creator.send(
            room,
            ALICE,
            "m.room.topic",
            {"topic": "", "m.topic": {"m.text": [{"body": "Quarterly planning"}]}},
            state_key="",
        )
        said = await self.say(room, ALICE, "we need more planning")
        await self.say(room, ALICE, "nothing to see")
        r = await self.search(ALICE, criteria("PLANNING"))
        self.assertCountEqual(
            found_ids(r), [name.event.event_id, topic.event.event_id, said.event.event_id]
        )
        self.assertEqual(r.json["search_categories"]["room_events"]["count"], 3)
        for key, expected in (
            ("content.body", said),
            ("content.name", name),
            ("content.topic", topic),
        ):
            r = await self.search(ALICE, criteria("planning", keys=[key]))
            self.assertEqual(found_ids(r), [expected.event.event_id], key)
        # Every word must match.
        r = await self.search(ALICE, criteria("planning corner"))
        self.assertEqual(found_ids(r), [name.event.event_id])

    async def test_stemming_and_highlights(self):
        room = await self.make_room()
        said = await self.say(room, ALICE, "The Meeting moved to Tuesday")
        r = await self.search(ALICE, criteria("meetings"))
        self.assertEqual(found_ids(r), [said.event.event_id])
        highlights = r.json["search_categories"]["room_events"]["highlights"]
        self.assertIn("meetings", highlights)
        self.assertIn("Meeting", highlights)
        result = r.json["search_categories"]["room_events"]["results"][0]
        self.assertIsInstance(result["rank"], float)
        self.assertEqual(result["result"]["content"]["body"], "The Meeting moved to Tuesday")

    async def test_recent_order_pages_through_everything_once(self):
        room = await self.make_room()
        sent = [
            (await self.say(room, ALICE, f"apple number {i}")).event.event_id for i in range(23)
        ]
        await self.say(room, ALICE, "pear")
        pages: list[list[str]] = []
        token: str | None = None
        while True:
            r = await self.search(
                ALICE, criteria("apple", order_by="recent", filter={"limit": 10}), token
            )
            pages.append(found_ids(r))
            token = r.json["search_categories"]["room_events"].get("next_batch")
            if token is None:
                break
        self.assertEqual([len(p) for p in pages], [10, 10, 3])
        self.assertEqual([e for p in pages for e in p], list(reversed(sent)))

    async def test_rank_order_puts_the_best_match_first_and_pages(self):
        room = await self.make_room()
        sent = [
            (await self.say(room, ALICE, f"kiwi and other fruit {i}")).event.event_id
            for i in range(12)
        ]
        best = await self.say(room, ALICE, "kiwi kiwi kiwi")
        r = await self.search(ALICE, criteria("kiwi", filter={"limit": 5}))
        first = found_ids(r)
        self.assertEqual(first[0], best.event.event_id)
        ranks = [x["rank"] for x in r.json["search_categories"]["room_events"]["results"]]
        self.assertEqual(ranks, sorted(ranks, reverse=True))
        seen = list(first)
        token = r.json["search_categories"]["room_events"]["next_batch"]
        while token is not None:
            r = await self.search(ALICE, criteria("kiwi", filter={"limit": 5}), token)
            seen.extend(found_ids(r))
            token = r.json["search_categories"]["room_events"].get("next_batch")
        self.assertCountEqual(seen, [*sent, best.event.event_id])
        # A rank token is refused for a recent search.
        r = await self.search(ALICE, criteria("kiwi", filter={"limit": 5}))
        token = r.json["search_categories"]["room_events"]["next_batch"]
        r = await self.search(ALICE, criteria("kiwi", order_by="recent"), token)
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_filter_rooms_senders_and_types(self):
        room_a = await self.make_room()
        room_b = await self.make_room()
        await self.membership(room_a, BOB, "join")
        from_alice = await self.say(room_a, ALICE, "banana split")
        from_bob = await self.say(room_a, BOB, "banana bread")
        in_b = await self.say(room_b, ALICE, "banana boat")
        named = await self.hs.event_creator.send(
            room_b, ALICE, "m.room.name", {"name": "Banana room"}, state_key=""
        )
        cases: list[tuple[dict[str, Any], list[Any]]] = [
            ({"rooms": [room_a]}, [from_alice, from_bob]),
            ({"not_rooms": [room_a]}, [in_b, named]),
            ({"senders": [BOB]}, [from_bob]),
            ({"not_senders": [BOB]}, [from_alice, in_b, named]),
            ({"types": ["m.room.name"]}, [named]),
            ({"not_types": ["m.room.message"]}, [named]),
            ({"rooms": [room_b], "types": ["m.room.message"]}, [in_b]),
        ]
        for event_filter, expected in cases:
            r = await self.search(ALICE, criteria("banana", filter=event_filter))
            self.assertCountEqual(found_ids(r), [e.event.event_id for e in expected], event_filter)
        r = await self.search(ALICE, criteria("banana", filter={"limit": 2}, order_by="recent"))
        self.assertEqual(found_ids(r), [named.event.event_id, in_b.event.event_id])

    async def test_groups_and_a_room_groups_next_batch(self):
        room_a = await self.make_room()
        room_b = await self.make_room()
        await self.membership(room_a, BOB, "join")
        a_events = [(await self.say(room_a, ALICE, f"cherry {i}")).event.event_id for i in range(3)]
        bob_event = (await self.say(room_a, BOB, "cherry from bob")).event.event_id
        b_events = [
            (await self.say(room_b, ALICE, f"cherry b{i}")).event.event_id for i in range(3)
        ]
        body = criteria(
            "cherry",
            order_by="recent",
            filter={"limit": 3},
            groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]},
        )
        r = await self.search(ALICE, body)
        self.assertEqual(found_ids(r), list(reversed(b_events)))
        groups = r.json["search_categories"]["room_events"]["groups"]
        self.assertEqual(groups["room_id"][room_b]["results"], list(reversed(b_events)))
        self.assertEqual(groups["room_id"][room_b]["order"], 1)
        self.assertEqual(list(groups["sender"]), [ALICE])
        # Room B's group token goes on in room B only: nothing is left there.
        token = groups["room_id"][room_b]["next_batch"]
        r = await self.search(ALICE, body, token)
        self.assertEqual(found_ids(r), [])
        # The global token goes on into room A.
        token = r.json["search_categories"]["room_events"].get("next_batch")
        self.assertIsNone(token)
        r = await self.search(ALICE, body)
        r = await self.search(ALICE, body, r.json["search_categories"]["room_events"]["next_batch"])
        self.assertEqual(found_ids(r), [bob_event, *reversed(a_events[1:])])
        self.assertEqual(
            set(r.json["search_categories"]["room_events"]["groups"]["sender"]), {ALICE, BOB}
        )

    async def test_event_context_profiles_and_state(self):
        room = await self.make_room()
        await self.hs.event_creator.send(
            room,
            ALICE,
            "m.room.member",
            {"membership": "join", "displayname": "Alice A"},
            state_key=ALICE,
        )
        before = [(await self.say(room, ALICE, f"before {i}")).event.event_id for i in range(3)]
        hit = await self.say(room, ALICE, "the durian moment")
        after = [(await self.say(room, ALICE, f"after {i}")).event.event_id for i in range(3)]
        r = await self.search(
            ALICE,
            criteria(
                "durian",
                include_state=True,
                event_context={"before_limit": 2, "after_limit": 1, "include_profile": True},
            ),
        )
        self.assertEqual(found_ids(r), [hit.event.event_id])
        category = r.json["search_categories"]["room_events"]
        context = category["results"][0]["context"]
        self.assertEqual([e["event_id"] for e in context["events_before"]], before[:0:-1])
        self.assertEqual([e["event_id"] for e in context["events_after"]], after[:1])
        self.assertEqual(context["profile_info"][ALICE], {"displayname": "Alice A"})
        self.assertIsInstance(context["start"], str)
        self.assertIsInstance(context["end"], str)
        state_types = {e["type"] for e in category["state"][room]}
        self.assertIn("m.room.create", state_types)
        self.assertIn("m.room.member", state_types)
        # Without event_context, no context.
        r = await self.search(ALICE, criteria("durian"))
        self.assertNotIn("context", r.json["search_categories"]["room_events"]["results"][0])
        self.assertNotIn("state", r.json["search_categories"]["room_events"])

    async def test_redacted_events_are_not_found(self):
        room = await self.make_room()
        said = await self.say(room, ALICE, "secret plans")
        kept = await self.say(room, ALICE, "public plans")
        r = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/redact/{said.event.event_id}/t1",
            {},
            token=self.tokens[ALICE],
        )
        self.assertEqual(r.code, 200, r)
        r = await self.search(ALICE, criteria("plans"))
        self.assertEqual(found_ids(r), [kept.event.event_id])
        r = await self.search(ALICE, criteria("secret"))
        self.assertEqual(found_ids(r), [])

    async def test_encrypted_events_are_not_indexed(self):
        room = await self.make_room()
        await self.hs.event_creator.send(
            room, ALICE, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}, state_key=""
        )
        await self.hs.event_creator.send(
            room,
            ALICE,
            "m.room.encrypted",
            {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "zebra", "body": "zebra"},
        )
        r = await self.search(ALICE, criteria("zebra"))
        self.assertEqual(found_ids(r), [])
        self.assertEqual(await self.index_rows(room), 0)

    async def test_search_term_is_never_query_syntax(self):
        room = await self.make_room()
        said = await self.say(room, ALICE, 'melon "quoted" NEAR(x) AND OR *')
        for term in (
            '"melon',
            "melon*",
            "melon OR",
            "NEAR(melon",
            "melon AND OR",
            "melon'; --",
            "melon:*",
            "melon & !",
            "(melon",
        ):
            r = await self.search(ALICE, criteria(term))
            self.assertEqual(found_ids(r), [said.event.event_id], term)
        # Words longer than PostgreSQL indexes, in the text and in the term: no error.
        long_word = "q" * 3000
        long_said = await self.say(room, ALICE, f"melon {long_word}")
        r = await self.search(ALICE, criteria("x" * 1000))
        self.assertEqual(found_ids(r), [])
        r = await self.search(ALICE, criteria("melon", order_by="recent"))
        self.assertEqual(found_ids(r), [long_said.event.event_id, said.event.event_id])


@on_both_engines
class SearchVisibility(SearchTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice", "bob", "carol")

    async def test_a_room_the_user_is_not_in_gives_nothing(self):
        room = await self.make_room(history_visibility="world_readable")
        await self.say(room, ALICE, "grape juice")
        r = await self.search(CAROL, criteria("grape"))
        self.assertEqual(found_ids(r), [])
        self.assertEqual(r.json["search_categories"]["room_events"]["count"], 0)
        # Naming it in the filter does not help.
        r = await self.search(CAROL, criteria("grape", filter={"rooms": [room]}))
        self.assertEqual(found_ids(r), [])

    async def test_joined_visibility_hides_what_came_before_the_join(self):
        for visibility in ("joined", "invited"):
            room = await self.make_room(history_visibility=visibility)
            await self.say(room, ALICE, f"lemon early {visibility}")
            await self.membership(room, BOB, "invite", sender=ALICE)
            while_invited = await self.say(room, ALICE, f"lemon pending {visibility}")
            await self.membership(room, BOB, "join")
            later = await self.say(room, ALICE, f"lemon later {visibility}")
            r = await self.search(BOB, criteria(f"lemon {visibility}", order_by="recent"))
            expected = [later.event.event_id]
            if visibility == "invited":
                expected.append(while_invited.event.event_id)
            self.assertEqual(found_ids(r), expected, visibility)
            # Alice, there all along, finds all three.
            r = await self.search(ALICE, criteria(f"lemon {visibility}"))
            self.assertEqual(len(found_ids(r)), 3)

    async def test_a_room_left_is_searched_up_to_the_leave(self):
        room = await self.make_room(history_visibility="shared")
        await self.membership(room, BOB, "join")
        before = await self.say(room, ALICE, "mango before")
        await self.membership(room, BOB, "leave")
        await self.say(room, ALICE, "mango after")
        r = await self.search(BOB, criteria("mango"))
        self.assertEqual(found_ids(r), [before.event.event_id])

    async def test_ignored_users_events_are_left_out(self):
        room = await self.make_room()
        await self.membership(room, BOB, "join")
        mine = await self.say(room, ALICE, "olive oil")
        await self.say(room, BOB, "olive branch")
        r = await self.request(
            "PUT",
            f"/_matrix/client/v3/user/{ALICE}/account_data/m.ignored_user_list",
            {"ignored_users": {BOB: {}}},
            token=self.tokens[ALICE],
        )
        self.assertEqual(r.code, 200, r)
        r = await self.search(ALICE, criteria("olive"))
        self.assertEqual(found_ids(r), [mine.event.event_id])


@on_both_engines
class SearchBadInput(SearchTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice")
        self.room = await self.make_room()
        for i in range(3):
            await self.say(self.room, ALICE, f"peach {i}")

    async def test_malformed_bodies_are_400_bad_json(self):
        bodies: list[Any] = [
            {},
            {"search_categories": []},
            {"search_categories": {"room_events": {"search_term": "peach"}, "people": {}}},
            {"search_categories": {"room_events": "peach"}},
            criteria("peach", keys=["content.url"]),
            criteria("peach", keys="content.body"),
            criteria("peach", keys=[]),
            criteria("peach", filter={"senders": "@alice:test.heddle"}),
            criteria("peach", filter={"limit": "ten"}),
            criteria("peach", filter=[]),
            criteria("peach", order_by="oldest"),
            criteria("peach", event_context={"before_limit": -1}),
            criteria("peach", event_context={"after_limit": "5"}),
            criteria("peach", event_context={"include_profile": "yes"}),
            criteria("peach", include_state="true"),
            criteria("peach", groupings={"group_by": [{"key": "type"}]}),
            criteria("peach", groupings={"group_by": "room_id"}),
            criteria(""),
            criteria("   !!! ... "),
            criteria("x" * 1001),
            criteria(" ".join(f"w{i}" for i in range(33))),
            {"search_categories": {"room_events": {"search_term": 5}}},
            {"search_categories": {"room_events": {}}},
        ]
        for body in bodies:
            r = await self.search(ALICE, body)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.search(ALICE, None, raw=b"{not json")
        self.assertError(r, 400, "M_NOT_JSON")

    async def test_bad_next_batch_is_400_invalid_param(self):
        def token(raw: str) -> str:
            return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

        bad = [
            "x" * 10_000,
            "!!!not base64!!!",
            "%%%",
            token("rank"),
            token("rank\n1"),
            token("rank\nabc\n"),
            token("rank\n-5\n"),
            token("rank\n" + "9" * 40 + "\n"),
            token("recent\n99999999999999999999\n"),
            token("rank\n1\nnot-a-room"),
            token("oldest\n1\n"),
            token("recent\n1\n"),  # a recent token for a rank search
            base64.urlsafe_b64encode(b"\xff\xfe\n1\n").decode(),
        ]
        for next_batch in bad:
            r = await self.search(ALICE, criteria("peach"), next_batch)
            self.assertError(r, 400, "M_INVALID_PARAM")
        # A good token of our own making still works.
        good = SearchBatch("rank", 1).encode()
        r = await self.search(ALICE, criteria("peach"), good)
        self.assertEqual(len(found_ids(r)), 2)

    async def test_no_category_is_an_empty_answer(self):
        r = await self.search(ALICE, {"search_categories": {}})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"search_categories": {}})

    async def test_needs_a_token(self):
        r = await self.request("POST", SEARCH, criteria("peach"))
        self.assertError(r, 401, "M_MISSING_TOKEN")


@on_both_engines
class SearchIndexUpkeep(SearchTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice")

    async def test_migration_indexes_events_stored_before_it(self):
        room = await self.make_room()
        said = await self.say(room, ALICE, "walnut cake")
        redacted = await self.say(room, ALICE, "walnut pie")
        r = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/redact/{redacted.event.event_id}/t1",
            {},
            token=self.tokens[ALICE],
        )
        self.assertEqual(r.code, 200, r)
        named = await self.hs.event_creator.send(
            room, ALICE, "m.room.name", {"name": "Walnut grove"}, state_key=""
        )
        (migration,) = [m for m in migrations_for(self.hs.db.engine.name) if m.number == 24]
        statements = split_statements(migration.path.read_text(encoding="utf-8"))
        backfill = statements[-1]

        def redo(txn: Any) -> None:
            txn.execute("DELETE FROM event_search")
            txn.execute(backfill)

        await self.hs.db.run_interaction("redo", redo)
        r = await self.search(ALICE, criteria("walnut"))
        self.assertCountEqual(found_ids(r), [said.event.event_id, named.event.event_id])


def _event(event_type: str, content: dict[str, Any], state_key: str | None = None) -> Event:
    pdu: dict[str, Any] = {
        "type": event_type,
        "content": content,
        "room_id": "!r:x",
        "sender": "@a:x",
        "origin_server_ts": 0,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(pdu, KNOWN_ROOM_VERSIONS["11"], "$e")


class SearchableTextRules(unittest.TestCase):
    def test_what_is_indexed(self):
        message = _event("m.room.message", {"msgtype": "m.text", "body": "hi\x00there"})
        self.assertEqual(searchable_text(message), ("content.body", "hi there"))
        self.assertEqual(
            searchable_text(_event("m.room.name", {"name": "Lobby"}, "")), ("content.name", "Lobby")
        )
        topic = _event(
            "m.room.topic",
            {
                "topic": "Plain",
                "m.topic": {
                    "m.text": [
                        {"mimetype": "text/html", "body": "<b>Plain</b>"},
                        {"body": "Plain"},
                        {"mimetype": "text/plain", "body": "More"},
                    ]
                },
            },
            "",
        )
        self.assertEqual(searchable_text(topic), ("content.topic", "Plain\nMore"))

    def test_what_is_not_indexed(self):
        for event in (
            _event("m.room.encrypted", {"ciphertext": "x", "body": "x"}),
            _event("m.room.message", {"body": 5}),
            _event("m.room.message", {"body": "   "}),
            _event("m.room.message", {"body": "state"}, "key"),
            _event("m.room.name", {"name": "Not the room name"}, "other"),
            _event("m.room.topic", {"m.topic": "not a block"}, ""),
            _event("m.reaction", {"body": "x"}),
        ):
            self.assertIsNone(searchable_text(event), event.pdu)

    def test_search_words(self):
        self.assertEqual(search_words("Hello, hello WORLD! naïve_x"), ("hello", "world", "naïve_x"))
        self.assertEqual(search_words("!!! ..."), ())


@on_both_engines
class SearchWithNio(RoomTestCase):
    """A matrix-nio client sends the messages; nio has no search call, so the search goes
    through its raw `send`."""

    async def test_nio_client_finds_what_it_sent(self):
        user = await self.user("nina")
        client = self.nio_client(user)
        created = await nio(client.room_create(name="Fruit stall"))
        self.assertIsInstance(created, RoomCreateResponse)
        sent = await nio(
            client.room_send(
                created.room_id, "m.room.message", {"msgtype": "m.text", "body": "fresh quince"}
            )
        )
        self.assertIsInstance(sent, RoomSendResponse)
        response = await nio(
            client.send(
                "POST",
                f"{SEARCH}?access_token={user.token}",
                json.dumps(criteria("quince")),
                {"Content-Type": "application/json"},
            )
        )
        body = await nio(response.json())
        self.assertEqual(response.status, 200, body)
        results = body["search_categories"]["room_events"]["results"]
        self.assertEqual([r["result"]["event_id"] for r in results], [sent.event_id])
