"""Every endpoint of the client-server API (Matrix v1.19) is served.

Driven by the spec's own list (`matrix-spec/endpoints.tsv`): each non-deprecated endpoint of
the client-server API, with its path parameters filled with plausible values, is called on a
running server with a valid access token (and an empty JSON object as the body of PUT, POST
and DELETE). It must answer something other than `404`/`405 M_UNRECOGNIZED` (what the router
says when no route matches) and never a 5xx. Any status the endpoint's own rules give (400 for
the empty body, 401 for user-interactive auth, 403, 404 M_NOT_FOUND) counts as served.

Endpoints Heddle leaves out on purpose (OAuth and SSO login, application services, the
spec's admin lock/suspend pair, policy servers' well-known) are `NOT_SERVED`, in
`homeserver/spec_versions.py`, with the reason for each. `EXPECTED_MISSING` lists the endpoints other branches are building now; the test fails when
one of them starts answering (so the list only shrinks) and names every endpoint that fails.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from twisted.trial import unittest

from homeserver.spec_versions import NOT_SERVED
from tests.harness import SERVER_NAME, on_both_engines
from tests.room_helpers import RoomTestCase, User

SPEC_DIR = Path(os.environ.get("HEDDLE_MATRIX_SPEC", "/work/shared/matrix-spec"))
ENDPOINTS_TSV = SPEC_DIR / "endpoints.tsv"

# Being built on other branches right now; the lead removes each entry as its branch lands.
# Empty since search, spaces, room summaries, 3PIDs, timestamp_to_event, mutual rooms,
# OpenID, TURN, extended profile fields, the support well-known and the third-party lookups
# landed. An entry looks like ("POST", "/_matrix/client/v3/search").
EXPECTED_MISSING: set[tuple[str, str]] = set()

# Query strings some endpoints need to answer at once instead of long-polling.
QUERIES = {
    "/_matrix/client/v3/sync": "?timeout=0",
    "/_matrix/client/v3/events": "?timeout=0",
}

# Endpoints that end the caller's session: each gets an account of its own.
SESSION_ENDERS = {
    ("POST", "/_matrix/client/v3/logout"),
    ("POST", "/_matrix/client/v3/logout/all"),
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def spec_endpoints() -> list[Endpoint]:
    """The non-deprecated client-server endpoints of the spec, each (method, path) once."""
    seen: dict[tuple[str, str], Endpoint] = {}
    with ENDPOINTS_TSV.open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["spec_api"] != "client-server" or row["deprecated"] == "yes":
                continue
            endpoint = Endpoint(row["method"], row["path"])
            seen.setdefault(endpoint.key, endpoint)
    return sorted(seen.values(), key=lambda e: (e.path, e.method))


def is_unserved(code: int, body: object) -> bool:
    """What the router answers for a path or method it has no route for (or a crash)."""
    if code >= 500:
        return True
    return code in (404, 405) and isinstance(body, dict) and body.get("errcode") == "M_UNRECOGNIZED"


class SpecListTests(unittest.TestCase):
    """The lists above name real endpoints of the spec, so a typo cannot hide a gap."""

    def test_lists_name_spec_endpoints(self) -> None:
        if not ENDPOINTS_TSV.exists():
            raise unittest.SkipTest(f"{ENDPOINTS_TSV} is not here")
        keys = {e.key for e in spec_endpoints()}
        self.assertEqual(sorted(set(NOT_SERVED) - keys), [])
        self.assertEqual(sorted(EXPECTED_MISSING - keys), [])
        self.assertEqual(sorted(SESSION_ENDERS - keys), [])
        self.assertFalse(set(NOT_SERVED) & EXPECTED_MISSING)


@on_both_engines
class EndpointCoverageTests(RoomTestCase):
    # The failure names every endpoint in full.
    maxDiff = None
    # The optional features switched on: an endpoint a feature switch turns off answers like
    # an unknown one (as in Synapse), which is not what this test looks for.
    config_overrides = {
        "media": {"url_preview": {"enabled": True}},
        "auth": {"login_via_existing_session": {"enabled": True}},
        "registration": {"allow_guest_access": True},
    }

    async def path_values(self, user: User) -> dict[str, str]:
        room_id = await self.create_room(user, preset="public_chat", room_alias_name="cover")
        sent = await self.send(user, room_id)
        assert sent.code == 200, sent
        return {
            "userId": user.user_id,
            "deviceId": user.device_id,
            "roomId": room_id,
            "roomIdOrAlias": room_id,
            "roomAlias": f"#cover:{SERVER_NAME}",
            "eventId": sent.json["event_id"],
            "eventType": "m.room.message",
            "stateKey": "",
            "txnId": "coverage-txn",
            "serverName": SERVER_NAME,
            "mediaId": "nosuchmedia",
            "fileName": "file.txt",
            "filterId": "0",
            "keyName": "m.tz",
            "kind": "override",
            "ruleId": "coverage.rule",
            "receiptType": "m.read",
            "relType": "m.annotation",
            "sessionId": "session",
            "version": "1",
            "tag": "u.coverage",
            "type": "org.example.coverage",
            "protocol": "irc",
            "idpId": "idp",
            "appserviceId": "appservice",
            "networkId": "network",
        }

    async def call(
        self, endpoint: Endpoint, values: dict[str, str], token: str
    ) -> tuple[int, object]:
        path = endpoint.path
        for name, value in values.items():
            path = path.replace("{" + name + "}", quote(value, safe=""))
        assert "{" not in path, f"no value for a parameter of {endpoint}"
        path += QUERIES.get(endpoint.path, "")
        body = {} if endpoint.method in ("PUT", "POST", "DELETE") else None
        r = await self.request(endpoint.method, path, body, token=token)
        try:
            parsed: object = r.json
        except ValueError:
            parsed = None
        return r.code, parsed

    async def test_every_spec_endpoint_is_served(self):
        if not ENDPOINTS_TSV.exists():
            raise unittest.SkipTest(f"{ENDPOINTS_TSV} is not here")
        alice = await self.user("alice")
        values = await self.path_values(alice)
        endpoints = [e for e in spec_endpoints() if e.key not in NOT_SERVED]
        # The ones ending a session last, each with its own account.
        endpoints.sort(key=lambda e: e.key in SESSION_ENDERS)
        unserved: list[str] = []
        now_served: list[str] = []
        for n, endpoint in enumerate(endpoints):
            token = alice.token
            if endpoint.key in SESSION_ENDERS:
                token = (await self.user(f"leaver{n}")).token
            code, body = await self.call(endpoint, values, token)
            if is_unserved(code, body):
                if endpoint.key not in EXPECTED_MISSING:
                    unserved.append(f"{endpoint} -> {code} {body}")
            elif endpoint.key in EXPECTED_MISSING:
                now_served.append(f"{endpoint} -> {code}")
        self.assertEqual(
            (unserved, now_served),
            ([], []),
            "first: endpoints not served; second: endpoints served now, to take out of "
            "EXPECTED_MISSING",
        )
