"""Server ACLs (m.room.server_acl): the pure rule, case by case from the spec's event schema;
and, between two Heddles, typing and receipt EDUs from a denied server ignored (server-server
API "Server Access Control Lists": ACLs apply to the EDUs local to a room).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.trial import unittest

from federation.acl import server_allowed_by_acl
from tests.federation_helpers import API, FederationTestCase, FedUser, Server, q
from tests.harness import on_both_engines

ALLOW_ALL = {"allow": ["*"]}


class ServerAclRuleTests(unittest.TestCase):
    def assertAllowed(self, server: str, acl: dict[str, Any], allowed: bool = True) -> None:
        self.assertEqual(server_allowed_by_acl(server, acl), allowed, (server, acl))

    def test_allow_all_allows_everyone(self) -> None:
        for server in ("example.org", "a.b.c.example.org", "localhost", "1.2.3.4", "[::1]"):
            self.assertAllowed(server, ALLOW_ALL)

    def test_missing_or_empty_allow_denies_everyone(self) -> None:
        acls: list[dict[str, Any]] = [{}, {"allow": []}, {"deny": []}, {"deny": ["evil.org"]}]
        for acl in acls:
            self.assertAllowed("example.org", acl, False)

    def test_deny_wins_over_allow(self) -> None:
        acl = {"allow": ["*"], "deny": ["evil.org"]}
        self.assertAllowed("evil.org", acl, False)
        self.assertAllowed("good.org", acl)
        self.assertAllowed("evil.org", {"allow": ["evil.org"], "deny": ["evil.org"]}, False)

    def test_only_listed_servers_are_allowed(self) -> None:
        acl = {"allow": ["good.org", "*.friends.net"]}
        self.assertAllowed("good.org", acl)
        self.assertAllowed("a.friends.net", acl)
        self.assertAllowed("x.y.friends.net", acl)
        self.assertAllowed("friends.net", acl, False)
        self.assertAllowed("other.org", acl, False)
        self.assertAllowed("notgood.org", acl, False)
        self.assertAllowed("good.org.evil.com", acl, False)

    def test_star_matches_any_run_and_question_mark_exactly_one(self) -> None:
        acl = {"allow": ["*"], "deny": ["evil?.org", "*.bad.*", "x*y.com"]}
        self.assertAllowed("evil1.org", acl, False)
        self.assertAllowed("evil.org", acl)  # ? needs one character
        self.assertAllowed("evil12.org", acl)  # ... and only one
        self.assertAllowed("a.bad.net", acl, False)
        self.assertAllowed("bad.net", acl)
        self.assertAllowed("xy.com", acl, False)  # * matches nothing too
        self.assertAllowed("x-anything-y.com", acl, False)

    def test_other_characters_are_literal(self) -> None:
        acl = {"allow": ["*"], "deny": ["a.b.org", "[x]", "(re)+"]}
        self.assertAllowed("a.b.org", acl, False)
        self.assertAllowed("aXb.org", acl)  # '.' is not a regex wildcard
        self.assertAllowed("[x]", acl, False)
        self.assertAllowed("x", acl)
        self.assertAllowed("(re)+", acl, False)
        self.assertAllowed("rere", acl)

    def test_matching_is_case_insensitive(self) -> None:
        acl = {"allow": ["*"], "deny": ["Evil.ORG"]}
        self.assertAllowed("evil.org", acl, False)
        self.assertAllowed("EVIL.org", acl, False)
        self.assertAllowed("good.org", {"allow": ["GOOD.*"]})

    def test_port_is_ignored(self) -> None:
        acl = {"allow": ["*"], "deny": ["evil.com"]}
        for server in ("evil.com", "evil.com:8448", "evil.com:1234"):
            self.assertAllowed(server, acl, False)
        self.assertAllowed("good.com:8448", {"allow": ["good.com"]})
        # A pattern naming a port can never match.
        self.assertAllowed("good.com:8448", {"allow": ["good.com:8448"]}, False)

    def test_ip_literals_denied_only_when_allow_ip_literals_is_false(self) -> None:
        for server in ("1.2.3.4", "1.2.3.4:8448", "[::1]", "[2001:db8::1]:8448"):
            self.assertAllowed(server, {"allow": ["*"]})
            self.assertAllowed(server, {"allow": ["*"], "allow_ip_literals": True})
            self.assertAllowed(server, {"allow": ["*"], "allow_ip_literals": False}, False)
        # Not a boolean: the default, true.
        self.assertAllowed("1.2.3.4", {"allow": ["*"], "allow_ip_literals": "false"})
        self.assertAllowed("1.2.3.4", {"allow": ["*"], "allow_ip_literals": 0})
        # Names that only look numeric are not IP literals.
        self.assertAllowed("1.2.3.4.example", {"allow": ["*"], "allow_ip_literals": False})
        self.assertAllowed("example.org", {"allow": ["*"], "allow_ip_literals": False})

    def test_ip_literals_can_be_matched_by_globs(self) -> None:
        self.assertAllowed("10.0.0.1", {"allow": ["*"], "deny": ["10.*"]}, False)
        self.assertAllowed("[::1]:8448", {"allow": ["[::1]"]})

    def test_malformed_lists_and_entries_are_ignored(self) -> None:
        self.assertAllowed("example.org", {"allow": "*"}, False)
        self.assertAllowed("example.org", {"allow": [5, None, "*"]})
        self.assertAllowed("example.org", {"allow": ["*"], "deny": "example.org"})
        self.assertAllowed("example.org", {"allow": ["*"], "deny": [{"x": 1}]})


_txn_ids = itertools.count(1)


@on_both_engines
class AclAppliesToEdus(FederationTestCase):
    async def send_edu_from_b(self, a: Server, b: Server, edu_type: str, content: Any) -> None:
        """A transaction from B to A carrying one EDU, as B would sign it (handled before the
        request returns)."""
        await b.hs.federation_client.put_json(
            a.server_name,
            f"/_matrix/federation/v1/send/acl{next(_txn_ids)}",
            {"origin": b.server_name, "origin_server_ts": 1, "pdus": [],
             "edus": [{"edu_type": edu_type, "content": content}]},
        )

    async def typing_and_receipt_from_b(
        self, a: Server, b: Server, bob: FedUser, room_id: str, event_id: str
    ) -> tuple[list[str], str | None]:
        """Bob typing and reading `event_id`, said by B to A: who types on A, and the event
        bob's receipt is at on A."""
        await self.send_edu_from_b(
            a, b, "m.typing", {"room_id": room_id, "user_id": bob.user_id, "typing": True}
        )
        typing = list(a.hs.typing.get_typing_users(room_id))
        await self.send_edu_from_b(
            a, b, "m.typing", {"room_id": room_id, "user_id": bob.user_id, "typing": False}
        )
        receipt_content = {
            room_id: {"m.read": {bob.user_id: {"event_ids": [event_id], "data": {"ts": 1}}}}
        }
        await self.send_edu_from_b(a, b, "m.receipt", receipt_content)
        receipt = await a.hs.receipt_store.get_receipt(room_id, "m.read", bob.user_id)
        return typing, receipt.event_id if receipt is not None else None

    async def test_typing_and_receipts_of_a_denied_server_are_ignored(self) -> None:
        a, b, alice, bob, room_id = await self.shared_room()
        first = await self.send_text(alice, room_id, "before", "t1")
        self.assertEqual(
            await self.typing_and_receipt_from_b(a, b, bob, room_id, first),
            ([bob.user_id], first),
        )

        # Both servers are IP literals: this denies B (A's own events need no ACL).
        r = await self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.server_acl",
            {"allow": ["*"], "allow_ip_literals": False},
        )
        assert r.code == 200, r
        second = await self.send_text(alice, room_id, "after", "t2")
        self.assertEqual(
            await self.typing_and_receipt_from_b(a, b, bob, room_id, second), ([], first)
        )
