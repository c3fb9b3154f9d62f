"""The event store's memory of which events are redacted: events asked about before are
answered without the database, "not redacted" included, and every redaction stored (here, in
another process, or before the event it redacts) reaches that memory, so an event is never
served whole after its redaction.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from twisted.internet import defer, reactor, task

from homeserver.app import HomeServer
from homeserver.events.model import Event
from storage.persister import EventContext
from tests.harness import HomeserverTestCase, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

_redaction_txns = itertools.count(1)


def get_redactions_transactions() -> float:
    """How many `get_redactions` transactions this test process has run."""
    value = REGISTRY.get_sample_value(
        "heddle_db_transaction_duration_seconds_count", {"desc": "get_redactions"}
    )
    return value or 0.0


class _RedactionTestCase(RoomTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(self.alice, preset="public_chat")
        r = await self.join(self.bob, self.room_id)
        self.assertEqual(r.code, 200, r)

    async def message(self, body: str = "secret") -> str:
        r = await self.send(self.alice, self.room_id, {"msgtype": "m.text", "body": body})
        self.assertEqual(r.code, 200, r)
        return r.json["event_id"]

    async def redact(self, event_id: str, room_id: str | None = None) -> str:
        room_id = room_id or self.room_id
        r = await self.request(
            "PUT",
            f"{API}/rooms/{q(room_id)}/redact/{q(event_id)}/r{next(_redaction_txns)}",
            {},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        return r.json["event_id"]

    async def event_over_http(self, user: User, event_id: str) -> dict[str, Any]:
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/event/{q(event_id)}", token=user.token
        )
        self.assertEqual(r.code, 200, r)
        return r.json

    async def messages_over_http(self, user: User) -> dict[str, dict[str, Any]]:
        """event_id -> the event as the latest page of /messages serves it."""
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/messages?dir=b&limit=50", token=user.token
        )
        self.assertEqual(r.code, 200, r)
        return {e["event_id"]: e for e in r.json["chunk"]}

    async def sync_over_http(self, user: User, since: str | None = None) -> dict[str, Any]:
        path = f"{API}/sync?set_presence=offline"
        if since is not None:
            path += f"&since={since}"
        r = await self.request("GET", path, token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json

    def timeline_of(self, sync: dict[str, Any]) -> dict[str, dict[str, Any]]:
        events = sync["rooms"]["join"][self.room_id]["timeline"]["events"]
        return {e["event_id"]: e for e in events}

    def assert_redacted_by(self, served: dict[str, Any], redaction_id: str) -> None:
        self.assertEqual(served["content"], {}, served)
        self.assertEqual(served["unsigned"]["redacted_because"]["event_id"], redaction_id)

    def assert_whole(self, served: dict[str, Any], body: str = "secret") -> None:
        self.assertEqual(served["content"].get("body"), body, served)
        self.assertNotIn("redacted_because", served["unsigned"])

    async def assert_served_redacted(self, event_id: str, redaction_id: str, since: str) -> None:
        """/event, /messages and /sync (from `since`, before the event) all prune it."""
        self.assert_redacted_by(await self.event_over_http(self.bob, event_id), redaction_id)
        self.assert_redacted_by((await self.messages_over_http(self.bob))[event_id], redaction_id)
        synced = self.timeline_of(await self.sync_over_http(self.bob, since))
        self.assert_redacted_by(synced[event_id], redaction_id)


@on_both_engines
class RedactionsServedFromMemory(_RedactionTestCase):
    async def test_event_served_whole_is_served_redacted_right_after_its_redaction(self):
        since = (await self.sync_over_http(self.bob))["next_batch"]
        event_id = await self.message()
        # Served whole over every endpoint, which remembers it as not redacted...
        self.assert_whole(await self.event_over_http(self.bob, event_id))
        self.assert_whole((await self.messages_over_http(self.bob))[event_id])
        self.assert_whole(self.timeline_of(await self.sync_over_http(self.bob, since))[event_id])
        before = get_redactions_transactions()
        self.assert_whole(await self.event_over_http(self.bob, event_id))
        self.assertEqual(get_redactions_transactions(), before, "served again from memory")
        # ...and redacted on every endpoint as soon as the redaction is stored.
        redaction_id = await self.redact(event_id)
        await self.assert_served_redacted(event_id, redaction_id, since)

    async def test_serializing_an_event_looked_at_before_reads_no_redactions(self):
        event_id = await self.message()
        stored = await self.hs.event_store.get_stored_event(event_id)
        assert stored is not None
        serializer = self.hs.event_serializer
        [first] = await serializer.serialize([stored])
        self.assert_whole(first)
        before = get_redactions_transactions()
        for _ in range(3):
            [again] = await serializer.serialize([stored], requester_device=(self.bob.user_id, "D"))
            self.assert_whole(again)
            [pdu] = await serializer.federation_forms([stored])
            self.assertEqual(pdu["content"]["body"], "secret")
        # Over HTTP too, for another user.
        self.assert_whole(await self.event_over_http(self.bob, event_id))
        self.assertEqual(get_redactions_transactions(), before)

    async def test_redacted_answer_is_remembered_too(self):
        event_id = await self.message()
        redaction_id = await self.redact(event_id)
        self.assert_redacted_by(await self.event_over_http(self.bob, event_id), redaction_id)
        before = get_redactions_transactions()
        self.assert_redacted_by(await self.event_over_http(self.alice, event_id), redaction_id)
        self.assertEqual(
            await self.hs.event_store.get_redactions([event_id]), {event_id: redaction_id}
        )
        self.assertEqual(get_redactions_transactions(), before)

    async def test_read_overtaken_by_a_redaction_is_not_remembered(self):
        """A read that took its answer before a redaction committed, and returns after the
        redaction's after-commit update ran, must not leave "not redacted" in memory."""
        store = self.hs.event_store
        event_id = await self.message()
        store.forget_redactions_of(event_id)
        db = self.hs.db
        original = db.run_interaction
        redaction_ids: list[str] = []

        async def overtaken(desc: str, *args: Any, **kwargs: Any) -> Any:
            result = await original(desc, *args, **kwargs)
            if desc == "get_redactions" and not redaction_ids:
                # The read has its answer; a redaction commits before the answer is back.
                db.run_interaction = original  # type: ignore[method-assign]
                redaction_ids.append(await self.redact(event_id))
            return result

        db.run_interaction = overtaken  # type: ignore[method-assign]
        try:
            stale = await store.get_redactions([event_id])
        finally:
            db.run_interaction = original  # type: ignore[method-assign]
        # That read's own answer is from before the redaction (as any read may be a moment
        # old), but what is remembered is not.
        self.assertEqual(stale, {})
        [redaction_id] = redaction_ids
        self.assertEqual(await store.get_redactions([event_id]), {event_id: redaction_id})
        self.assert_redacted_by(await self.event_over_http(self.bob, event_id), redaction_id)

    async def test_redaction_stored_before_the_event_it_redacts(self):
        """Federation can deliver a redaction before its target; an event asked about (and
        remembered as not redacted) before either arrived is served redacted once it does."""
        creator = self.hs.event_creator
        version = await self.hs.event_store.get_room_version(self.room_id)
        assert version is not None
        current = await self.hs.state_store.get_current_state_ids(self.room_id)
        pdu = await creator.build_pdu(
            self.room_id, version, self.alice.user_id, "m.room.message",
            {"msgtype": "m.text", "body": "secret"}, None, current,
        )
        late: Event = creator.finish_event(pdu, version)
        group_before = await self.hs.event_store.get_current_state_group(self.room_id)
        since = (await self.sync_over_http(self.bob))["next_batch"]
        self.assertEqual(await self.hs.event_store.get_redactions([late.event_id]), {})

        redaction = await creator.send(
            self.room_id, self.alice.user_id, "m.room.redaction", {"redacts": late.event_id}
        )
        async with creator.room_writer(self.room_id):
            await creator.persist_and_notify(
                self.room_id, late,
                EventContext(state_group_before=group_before, updates_current_state=False),
            )
        await self.assert_served_redacted(late.event_id, redaction.event.event_id, since)

    @contextlib.contextmanager
    def commit_then_fail(self, desc: str) -> Iterator[None]:
        """Transactions named `desc` commit, then fail as a connection lost while
        committing would: the caller sees an error, and no after-commit work runs."""
        db = self.hs.db
        original = db._run_in_thread

        def commits_then_fails(name: str, *args: Any) -> Any:
            result = original(name, *args)
            if name == desc:
                raise ConnectionError("lost after the commit")
            return result

        db._run_in_thread = commits_then_fails  # type: ignore[method-assign]
        try:
            yield
        finally:
            db._run_in_thread = original  # type: ignore[method-assign]

    async def assert_read_again_after_doubt(self, event_id: str, redaction_id: str) -> None:
        self.assertEqual(
            await self.hs.event_store.get_redactions([event_id]), {event_id: redaction_id}
        )
        self.assert_redacted_by(await self.event_over_http(self.bob, event_id), redaction_id)

    async def test_redaction_whose_commit_is_in_doubt_is_read_again(self):
        """A persist that fails after its transaction may have committed (a connection lost
        while committing) leaves nothing remembered about the event it redacts."""
        event_id = await self.message()
        self.assert_whole(await self.event_over_http(self.bob, event_id))
        with self.commit_then_fail("persist_event"), self.assertRaises(ConnectionError):
            await self.hs.event_creator.send(
                self.room_id, self.alice.user_id, "m.room.redaction", {"redacts": event_id}
            )
        # The redaction's row, read past every cache: it was committed.
        row = await self.hs.db.run_interaction(
            "test_redaction_row",
            lambda txn: txn.select_one(
                "SELECT event_id FROM redactions WHERE redacts = ?", (event_id,)
            ),
        )
        assert row is not None
        await self.assert_read_again_after_doubt(event_id, row[0])

    async def test_backfilled_redaction_whose_commit_is_in_doubt_is_read_again(self):
        event_id = await self.message()
        self.assert_whole(await self.event_over_http(self.bob, event_id))
        creator = self.hs.event_creator
        version = await self.hs.event_store.get_room_version(self.room_id)
        assert version is not None
        current = await self.hs.state_store.get_current_state_ids(self.room_id)
        pdu = await creator.build_pdu(
            self.room_id, version, self.alice.user_id, "m.room.redaction",
            {"redacts": event_id}, None, current,
        )
        redaction = creator.finish_event(pdu, version)
        group = await self.hs.event_store.get_current_state_group(self.room_id)
        context = EventContext(
            state_group_before=group, backfilled=True, updates_current_state=False
        )
        with self.commit_then_fail("persist_backfilled_event"), self.assertRaises(ConnectionError):
            await self.hs.persister.persist(redaction, context)
        await self.assert_read_again_after_doubt(event_id, redaction.event_id)

    async def test_redaction_from_another_room_still_does_not_apply(self):
        """`redacts` may name an event of another room (federation stores what it is
        given): the event stays whole, remembered or not."""
        event_id = await self.message()
        self.assert_whole(await self.event_over_http(self.bob, event_id))
        other_room = await self.create_room(self.alice)
        await self.hs.event_creator.send(
            other_room, self.alice.user_id, "m.room.redaction", {"redacts": event_id}
        )
        self.assert_whole(await self.event_over_http(self.bob, event_id))
        self.assert_whole((await self.messages_over_http(self.bob))[event_id])
        stored = await self.hs.event_store.get_stored_event(event_id)
        assert stored is not None
        [pdu] = await self.hs.event_serializer.federation_forms([stored])
        self.assertEqual(pdu["content"]["body"], "secret")


@on_both_engines
class RedactionsFanOut(HomeserverTestCase):
    """Two processes on one database and Redis: a redaction stored by one reaches what the
    other remembers about the event."""

    def setUp(self):
        prefix = f"heddle-test-{uuid.uuid4().hex}"
        return defer.ensureDeferred(
            self.start_server(redis={"enabled": True, "channel_prefix": prefix})
        )

    async def start_second_server(self) -> HomeServer:
        other = HomeServer(self.hs.config, reactor, writer_lock=False)
        await other.setup()
        other.start_listening()
        self.addCleanup(lambda: defer.ensureDeferred(other.stop()))
        self.published: list[tuple[str, str]] = []
        self.received: list[tuple[str, str]] = []
        self.hs.event_store.redaction_listeners.append(
            lambda redacts, redaction_id: self.published.append((redacts, redaction_id))
        )
        apply = other.event_store.redaction_stored_elsewhere

        def counting(redacts: str, redaction_id: str) -> None:
            self.received.append((redacts, redaction_id))
            apply(redacts, redaction_id)

        other.event_store.redaction_stored_elsewhere = counting  # type: ignore[method-assign]
        return other

    async def fan_out_delivered(self) -> None:
        for _ in range(100):
            if len(self.received) >= len(self.published):
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"{len(self.published)} published, {len(self.received)} received")

    async def message_in_a_room(self) -> tuple[str, str, str]:
        """(alice's token, room ID, event ID of a message)."""
        alice = (await self.register("alice"))["access_token"]
        r = await self.request("POST", f"{API}/createRoom", {"preset": "public_chat"}, token=alice)
        self.assertEqual(r.code, 200, r)
        room_id = r.json["room_id"]
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "secret"}, token=alice,
        )
        self.assertEqual(r.code, 200, r)
        return alice, room_id, r.json["event_id"]

    async def test_redaction_on_one_process_reaches_the_others_memory(self):
        other = await self.start_second_server()
        alice, room_id, event_id = await self.message_in_a_room()
        # The second process remembers the message as not redacted.
        self.assertEqual(await other.event_store.get_redactions([event_id]), {})
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/redact/{q(event_id)}/r1", {}, token=alice
        )
        self.assertEqual(r.code, 200, r)
        await self.fan_out_delivered()
        self.assertEqual(
            await other.event_store.get_redactions([event_id]), {event_id: r.json["event_id"]}
        )
        stored = await other.event_store.get_stored_event(event_id)
        assert stored is not None
        [served] = await other.event_serializer.serialize([stored])
        self.assertEqual(served["content"], {})

    async def test_without_the_message_the_other_process_would_stay_behind(self):
        """Guard for the test above: the second process really answers from memory."""
        other = await self.start_second_server()
        _, _, event_id = await self.message_in_a_room()
        self.assertEqual(await other.event_store.get_redactions([event_id]), {})
        # A redaction written behind both processes' backs (no fan-out) goes unseen.
        await self.hs.db.run_interaction(
            "test_redaction_behind",
            lambda txn: txn.execute(
                "INSERT INTO redactions (event_id, redacts) VALUES (?, ?)", ("$behind", event_id)
            ),
        )
        self.assertEqual(await other.event_store.get_redactions([event_id]), {})
