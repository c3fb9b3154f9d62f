"""Server ACLs (m.room.server_acl): the pure rule, case by case from the spec's event schema."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from federation.acl import server_allowed_by_acl

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
