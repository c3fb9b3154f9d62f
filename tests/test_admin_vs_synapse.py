"""One scripted admin session run against a real Synapse and against Heddle (both engines),
compared step by step: the same status code, the same errcode on errors, and the same
response keys (recursively; for a list, the union of its items' keys) with values of the
same JSON types (null matching any).

Both servers get the same users, rooms, media and account data first (through the
shared-secret registration endpoint and the client API), then `SESSION` runs against each.
Synapse runs once for the module: its answers do not depend on Heddle's engine, so they
are recorded on the first run and reused. Values are never compared, only shapes; keys
that are IDs (user, room, device, media IDs and server names) are replaced by the
placeholder that names them, so `{alice}` matches on both servers.

Differences that are known and justified are listed in `ALLOWED`, each with its reason;
anything else fails the test. Skipped only when there is no Synapse (see
`tests/synapse_peer.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor, task
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from tests.admin_helpers import AdminTestCase
from tests.harness import SERVER_NAME, BytesProducer, Response, on_both_engines
from tests.synapse_peer import SynapsePeer, require_synapse

ADMIN = "/_synapse/admin"
CLIENT = "/_matrix/client/v3"
MEDIA = "/_matrix/media/v3"
PASSWORD = "compare password 1"
NOTICES = {"system_mxid_localpart": "notices", "room_name": "Server notices"}

# (method, path, body, raw body, content type, token) -> response
Call = Callable[[str, str, Any, bytes | None, str | None, str | None], Awaitable[Response]]


@dataclass
class Step:
    """One admin request. `path` and `body` use `{placeholders}` from the session's
    variables (quoted in paths); `as_user` names whose token is sent (None: none);
    `save` names variables to take from the JSON answer; `until` re-polls (up to
    20 s) while the answer does not satisfy it (for background jobs). `id_keyed` names
    the objects (by key path) whose keys are IDs not known to the session (devices): their
    values are compared, merged, not their keys. `opaque` names paths not compared at all
    (event contents: data, not the API's shape)."""

    name: str
    method: str
    path: str
    body: Any = None
    as_user: str | None = "admin"
    save: dict[str, str] = field(default_factory=dict)
    until: Callable[[Any], bool] | None = None
    id_keyed: tuple[str, ...] = ()
    opaque: tuple[str, ...] = ()


def _finished(body: Any) -> bool:
    results = body.get("results") if isinstance(body, dict) else None
    status = results[0].get("status") if results else body.get("status")
    return status in ("complete", "failed")


SESSION: list[Step] = [
    # ----- server ---------------------------------------------------------------------------
    Step("server_version", "GET", "/v1/server_version"),
    Step("server_version non-admin", "GET", "/v1/server_version", as_user="alice"),
    # ----- users ----------------------------------------------------------------------------
    Step("list users", "GET", "/v2/users?from=0&limit=10&guests=false"),
    Step("list users page", "GET", "/v2/users?from=0&limit=2"),
    Step("list users v3", "GET", "/v3/users?deactivated=true&order_by=name&dir=b"),
    Step("list users non-admin", "GET", "/v2/users", as_user="alice"),
    Step("list users no token", "GET", "/v2/users", as_user=None),
    Step("list users bad from", "GET", "/v2/users?from=-1"),
    Step("list users bad limit", "GET", "/v2/users?limit=-5"),
    Step("list users bad order", "GET", "/v2/users?order_by=nonsense"),
    Step("list users bad dir", "GET", "/v2/users?dir=sideways"),
    Step("query user", "GET", "/v2/users/{alice}"),
    Step("query unknown user", "GET", "/v2/users/@nobody:{server}"),
    Step("query remote user", "GET", "/v2/users/@someone:elsewhere.example"),
    Step(
        "create user",
        "PUT",
        "/v2/users/@dave:{server}",
        {"password": PASSWORD, "displayname": "Dave", "admin": False},
    ),
    Step("modify user", "PUT", "/v2/users/{bob}", {"displayname": "Bobby"}),
    Step("modify user bad type", "PUT", "/v2/users/{bob}", {"admin": "yes"}),
    Step("is admin", "GET", "/v1/users/{alice}/admin"),
    Step("make admin", "PUT", "/v1/users/{bob}/admin", {"admin": True}),
    Step("unmake admin", "PUT", "/v1/users/{bob}/admin", {"admin": False}),
    Step("demote self", "PUT", "/v1/users/{admin}/admin", {"admin": False}),
    Step(
        "reset password",
        "POST",
        "/v1/reset_password/{bob}",
        {"new_password": PASSWORD + "x", "logout_devices": False},
    ),
    Step(
        "reset password unknown",
        "POST",
        "/v1/reset_password/@nobody:{server}",
        {"new_password": PASSWORD},
    ),
    Step("whois", "GET", "/v1/whois/{alice}", id_keyed=("devices",)),
    Step("whois unknown", "GET", "/v1/whois/@nobody:{server}"),
    Step("devices", "GET", "/v2/users/{alice}/devices"),
    Step("device", "GET", "/v2/users/{alice}/devices/{alice_device}"),
    Step("device unknown", "GET", "/v2/users/{alice}/devices/NODEVICE"),
    Step(
        "device rename",
        "PUT",
        "/v2/users/{alice}/devices/{alice_device}",
        {"display_name": "renamed"},
    ),
    Step("delete no devices", "POST", "/v2/users/{bob}/delete_devices", {"devices": []}),
    Step("delete devices bad body", "POST", "/v2/users/{bob}/delete_devices", {"devices": "x"}),
    Step("devices unknown user", "GET", "/v2/users/@nobody:{server}/devices"),
    Step("joined rooms", "GET", "/v1/users/{alice}/joined_rooms"),
    Step("joined rooms unknown", "GET", "/v1/users/@nobody:{server}/joined_rooms"),
    Step("account data", "GET", "/v1/users/{alice}/accountdata"),
    Step("account data unknown", "GET", "/v1/users/@nobody:{server}/accountdata"),
    Step("login as", "POST", "/v1/users/{alice}/login", {}),
    Step("login as unknown", "POST", "/v1/users/@nobody:{server}/login", {}),
    Step("login as bad until", "POST", "/v1/users/{alice}/login", {"valid_until_ms": "soon"}),
    Step("shadow ban", "POST", "/v1/users/{bob}/shadow_ban"),
    Step("shadow unban", "DELETE", "/v1/users/{bob}/shadow_ban"),
    Step("ratelimit none", "GET", "/v1/users/{bob}/override_ratelimit"),
    Step(
        "ratelimit set",
        "POST",
        "/v1/users/{bob}/override_ratelimit",
        {"messages_per_second": 0, "burst_count": 0},
    ),
    Step("ratelimit get", "GET", "/v1/users/{bob}/override_ratelimit"),
    Step(
        "ratelimit bad", "POST", "/v1/users/{bob}/override_ratelimit", {"messages_per_second": -1}
    ),
    Step("ratelimit delete", "DELETE", "/v1/users/{bob}/override_ratelimit"),
    Step("lock", "PUT", "/v2/users/{bob}", {"locked": True}),
    Step("locked token", "GET", "/_matrix/client/v3/account/whoami", as_user="bob"),
    Step("unlock", "PUT", "/v2/users/{bob}", {"locked": False}),
    Step("suspend", "PUT", "/v1/suspend/{bob}", {"suspend": True}),
    Step("unsuspend", "PUT", "/v1/suspend/{bob}", {"suspend": False}),
    Step("suspend bad body", "PUT", "/v1/suspend/{bob}", {"suspend": "yes"}),
    Step("suspend unknown", "PUT", "/v1/suspend/@nobody:{server}", {"suspend": True}),
    # ----- rooms ----------------------------------------------------------------------------
    Step("list rooms", "GET", "/v1/rooms"),
    Step("list rooms page", "GET", "/v1/rooms?from=0&limit=1&order_by=name&dir=f"),
    Step("list rooms search", "GET", "/v1/rooms?search_term=Compare"),
    Step("list rooms bad from", "GET", "/v1/rooms?from=-1"),
    Step("list rooms bad order", "GET", "/v1/rooms?order_by=nonsense"),
    Step("list rooms non-admin", "GET", "/v1/rooms", as_user="alice"),
    Step("room details", "GET", "/v1/rooms/{room}"),
    Step("room details unknown", "GET", "/v1/rooms/!nope:{server}"),
    Step("room members", "GET", "/v1/rooms/{room}/members"),
    Step("room members unknown", "GET", "/v1/rooms/!nope:{server}/members"),
    Step(
        "room state",
        "GET",
        "/v1/rooms/{room}/state",
        opaque=("state[].content", "state[].unsigned"),
    ),
    Step(
        "room messages",
        "GET",
        "/v1/rooms/{room}/messages?dir=b&limit=5",
        opaque=("chunk[].content", "chunk[].unsigned"),
    ),
    Step("room messages bad dir", "GET", "/v1/rooms/{room}/messages?dir=sideways"),
    Step("room messages unknown", "GET", "/v1/rooms/!nope:{server}/messages?dir=b"),
    Step("block status", "GET", "/v1/rooms/{room2}/block"),
    Step("block", "PUT", "/v1/rooms/{room2}/block", {"block": True}),
    Step("block status blocked", "GET", "/v1/rooms/{room2}/block"),
    Step("block bad body", "PUT", "/v1/rooms/{room2}/block", {"block": "yes"}),
    Step("make room admin", "POST", "/v1/rooms/{room}/make_room_admin", {"user_id": "{bob}"}),
    Step(
        "make room admin unknown room",
        "POST",
        "/v1/rooms/!nope:{server}/make_room_admin",
        {"user_id": "{bob}"},
    ),
    Step("forward extremities", "GET", "/v1/rooms/{room}/forward_extremities"),
    Step("forward extremities unknown", "GET", "/v1/rooms/!nope:{server}/forward_extremities"),
    Step(
        "purge history",
        "POST",
        "/v1/purge_history/{room}",
        {"delete_local_events": False, "purge_up_to_event_id": "{first_message}"},
        save={"purge_id": "purge_id"},
    ),
    Step("purge history status", "GET", "/v1/purge_history_status/{purge_id}", until=_finished),
    Step("purge history status unknown", "GET", "/v1/purge_history_status/nonexistent"),
    Step("purge history no point", "POST", "/v1/purge_history/{room}", {}),
    Step("room media", "GET", "/v1/room/{room}/media"),
    Step("room media unknown", "GET", "/v1/room/!nope:{server}/media"),
    # ----- registration tokens --------------------------------------------------------------
    Step("tokens empty", "GET", "/v1/registration_tokens"),
    Step(
        "token create", "POST", "/v1/registration_tokens/new", {"token": "abcd", "uses_allowed": 5}
    ),
    Step("token create random", "POST", "/v1/registration_tokens/new", {"length": 10}),
    Step("token create duplicate", "POST", "/v1/registration_tokens/new", {"token": "abcd"}),
    Step("token create past expiry", "POST", "/v1/registration_tokens/new", {"expiry_time": 1000}),
    Step("token create bad uses", "POST", "/v1/registration_tokens/new", {"uses_allowed": -1}),
    Step("token get", "GET", "/v1/registration_tokens/abcd"),
    Step("token update", "PUT", "/v1/registration_tokens/abcd", {"uses_allowed": 10}),
    Step("token update bad", "PUT", "/v1/registration_tokens/abcd", {"expiry_time": "x"}),
    Step("tokens list", "GET", "/v1/registration_tokens?valid=true"),
    Step("token delete", "DELETE", "/v1/registration_tokens/abcd"),
    Step("token get unknown", "GET", "/v1/registration_tokens/abcd"),
    # ----- media ----------------------------------------------------------------------------
    Step("user media", "GET", "/v1/users/{alice}/media"),
    Step("user media page", "GET", "/v1/users/{alice}/media?from=0&limit=1&order_by=media_length"),
    Step("user media bad from", "GET", "/v1/users/{alice}/media?from=-1"),
    Step("user media bad order", "GET", "/v1/users/{alice}/media?order_by=nonsense"),
    Step("user media unknown", "GET", "/v1/users/@nobody:{server}/media"),
    Step("media details", "GET", "/v1/media/{server}/{media}"),
    Step("media details unknown", "GET", "/v1/media/{server}/nonexistentmedia"),
    Step("quarantine room media", "POST", "/v1/room/{room}/media/quarantine"),
    Step("quarantine user media", "POST", "/v1/user/{bob}/media/quarantine"),
    Step("quarantine", "POST", "/v1/media/quarantine/{server}/{media}"),
    Step("unquarantine", "POST", "/v1/media/unquarantine/{server}/{media}"),
    Step("protect", "POST", "/v1/media/protect/{media}"),
    Step("unprotect", "POST", "/v1/media/unprotect/{media}"),
    Step("delete media", "DELETE", "/v1/media/{server}/{media2}"),
    Step("delete media unknown", "DELETE", "/v1/media/{server}/nonexistentmedia"),
    Step("delete media remote", "DELETE", "/v1/media/elsewhere.example/abc"),
    Step("delete old media bad ts", "POST", "/v1/media/delete?before_ts=-1"),
    Step("delete old media no ts", "POST", "/v1/media/delete"),
    Step("delete old media seconds", "POST", "/v1/media/delete?before_ts=1000"),
    # 31 000 000 000 ms is in December 1970: nothing is that old.
    Step("delete old media", "POST", "/v1/media/delete?before_ts=31000000000"),
    Step("delete user media", "DELETE", "/v1/users/{bob}/media"),
    Step("purge media cache seconds", "POST", "/v1/purge_media_cache?before_ts=1000"),
    Step("purge media cache", "POST", "/v1/purge_media_cache?before_ts=31000000000"),
    Step("purge media cache no ts", "POST", "/v1/purge_media_cache"),
    Step("purge media cache bad ts", "POST", "/v1/purge_media_cache?before_ts=-1"),
    Step(
        "purge media cache non-admin", "POST", "/v1/purge_media_cache?before_ts=1", as_user="alice"
    ),
    # ----- federation -----------------------------------------------------------------------
    Step("destinations", "GET", "/v1/federation/destinations"),
    Step("destinations bad from", "GET", "/v1/federation/destinations?from=-1"),
    Step("destination unknown", "GET", "/v1/federation/destinations/elsewhere.example"),
    Step("destination rooms unknown", "GET", "/v1/federation/destinations/elsewhere.example/rooms"),
    # ----- server notices -------------------------------------------------------------------
    Step(
        "server notice",
        "POST",
        "/v1/send_server_notice",
        {"user_id": "{alice}", "content": {"msgtype": "m.text", "body": "hello"}},
    ),
    Step(
        "server notice txn",
        "PUT",
        "/v1/send_server_notice/txn1",
        {"user_id": "{alice}", "content": {"msgtype": "m.text", "body": "again"}},
    ),
    Step("server notice no content", "POST", "/v1/send_server_notice", {"user_id": "{alice}"}),
    Step(
        "server notice remote",
        "POST",
        "/v1/send_server_notice",
        {"user_id": "@x:elsewhere.example", "content": {"msgtype": "m.text", "body": "x"}},
    ),
    # ----- destructive steps, last ----------------------------------------------------------
    Step("deactivate", "POST", "/v1/deactivate/{carol}", {"erase": False}),
    Step("query deactivated", "GET", "/v2/users/{carol}"),
    Step("deactivate unknown", "POST", "/v1/deactivate/@nobody:{server}", {}),
    Step("deactivate bad erase", "POST", "/v1/deactivate/{carol}", {"erase": "yes"}),
    Step(
        "delete room",
        "DELETE",
        "/v2/rooms/{room2}",
        {"purge": True},
        save={"delete_id": "delete_id"},
    ),
    Step("delete room status", "GET", "/v2/rooms/{room2}/delete_status", until=_finished),
    Step("delete status by id", "GET", "/v2/rooms/delete_status/{delete_id}"),
    Step("delete status unknown", "GET", "/v2/rooms/delete_status/nonexistent"),
    Step("delete room unknown", "DELETE", "/v2/rooms/!nope:{server}", {}),
    Step("delete room bad body", "DELETE", "/v2/rooms/{room}", {"block": "yes"}),
    Step("delete room bad id", "DELETE", "/v2/rooms/nonsense", {}),
    Step("deactivate last admin", "POST", "/v1/deactivate/{admin}", {}),
]


# Known, justified differences: (step name, key path or "status"/"errcode") -> why.
# Synapse's SynapseError defaults to M_UNKNOWN; Heddle names the error instead.
_NAMED = "Synapse answers a generic M_UNKNOWN; Heddle names the error (M_INVALID_PARAM...)"
# Synapse does not check that the user or room exists and answers an empty result; Heddle
# answers 404 M_NOT_FOUND, as for every other unknown user or room (an admin's typo shows).
_UNKNOWN = "Synapse answers an empty result for an unknown ID; Heddle 404 M_NOT_FOUND"
# Synapse serialises these events in its legacy v1 format (top-level `age`, `user_id`,
# `replaces_state`, `prev_content`); Heddle in the client-server API's (`sender`,
# `unsigned.age`, `unsigned.prev_content`): the same data, the spec's names.
_V1_FORMAT = "Synapse's legacy v1 event format; Heddle the spec's client format"
ALLOWED: dict[tuple[str, str], str] = {
    ("query remote user", "errcode"): _NAMED,
    ("demote self", "errcode"): _NAMED,
    ("login as bad until", "errcode"): _NAMED,
    ("delete media remote", "errcode"): _NAMED,
    ("server notice remote", "errcode"): _NAMED,
    ("delete room bad id", "errcode"): _NAMED,
    ("whois unknown", "status"): _UNKNOWN,
    ("joined rooms unknown", "status"): _UNKNOWN,
    ("room messages unknown", "status"): _UNKNOWN,
    ("forward extremities unknown", "status"): _UNKNOWN,
    ("room media unknown", "status"): _UNKNOWN,
    # Synapse says 400 M_UNKNOWN "Server not in room".
    ("make room admin unknown room", "status"): _UNKNOWN,
    # Synapse starts a delete job (and can block) even for a room it never knew; Heddle
    # blocks unknown rooms through /block instead.
    ("delete room unknown", "status"): _UNKNOWN,
    ("room state", "state[].age"): _V1_FORMAT,
    ("room state", "state[].user_id"): _V1_FORMAT,
    ("room state", "state[].replaces_state"): _V1_FORMAT,
    ("room messages", "chunk[].age"): _V1_FORMAT,
    ("room messages", "chunk[].user_id"): _V1_FORMAT,
    ("room messages", "chunk[].replaces_state"): _V1_FORMAT,
    ("room messages", "chunk[].prev_content"): _V1_FORMAT,
    # Synapse does not check that `devices` is a list (a string is taken as its letters).
    ("delete devices bad body", "status"): "Synapse accepts a `devices` that is no list",
    # Synapse on SQLite (as here) passes the column's 0/1 through; on PostgreSQL a bool.
    ("media details", "media_info.safe_from_quarantine"): "Synapse's SQLite integer",
    # Heddle's guard rail (docs/architecture.md, Admin API): the last admin stays.
    ("deactivate last admin", "status"): "Heddle refuses to deactivate the last admin",
}


@dataclass
class Outcome:
    code: int
    errcode: str | None
    shape: Any


class Server:
    """One homeserver under test, reached through `call`; its state in `variables`."""

    def __init__(self, label: str, server_name: str, shared_secret: str, call: Call) -> None:
        self.label = label
        self.call = call
        self.shared_secret = shared_secret
        self.variables: dict[str, str] = {"server": server_name}
        self.tokens: dict[str, str] = {}

    async def json_call(
        self, method: str, path: str, body: Any = None, as_user: str | None = None
    ) -> Any:
        token = self.tokens[as_user] if as_user else None
        r = await self.call(method, path, body, None, None, token)
        assert r.code == 200, f"{self.label}: {method} {path}: {r!r}"
        return r.json

    async def register(self, localpart: str, admin: bool = False) -> None:
        """Through the shared-secret admin endpoint, which both servers serve."""
        path = ADMIN + "/v1/register"
        nonce = (await self.json_call("GET", path))["nonce"]
        message = b"\x00".join(
            [
                nonce.encode(),
                localpart.encode(),
                PASSWORD.encode(),
                b"admin" if admin else b"notadmin",
            ]
        )
        mac = hmac.new(self.shared_secret.encode(), message, hashlib.sha1).hexdigest()
        session = await self.json_call(
            "POST",
            path,
            {
                "nonce": nonce,
                "username": localpart,
                "password": PASSWORD,
                "admin": admin,
                "mac": mac,
            },
        )
        self.variables[localpart] = session["user_id"]
        self.variables[f"{localpart}_device"] = session["device_id"]
        self.tokens[localpart] = session["access_token"]

    async def upload(self, data: bytes, name: str) -> str:
        r = await self.call(
            "POST",
            f"{MEDIA}/upload?filename={name}",
            None,
            data,
            "text/plain",
            self.tokens["alice"],
        )
        assert r.code == 200, f"{self.label}: upload: {r!r}"
        return str(r.json["content_uri"].rsplit("/", 1)[1])

    async def populate(self) -> None:
        """The same users, rooms, media and account data on every server."""
        await self.register("admin", admin=True)
        for localpart in ("alice", "bob", "carol"):
            await self.register(localpart)
        alice = self.variables["alice"]
        room = (
            await self.json_call(
                "POST",
                f"{CLIENT}/createRoom",
                {"name": "Compare", "preset": "public_chat", "room_alias_name": "compare"},
                as_user="alice",
            )
        )["room_id"]
        room2 = (
            await self.json_call(
                "POST",
                f"{CLIENT}/createRoom",
                {"name": "Doomed", "preset": "public_chat"},
                as_user="alice",
            )
        )["room_id"]
        self.variables.update(room=room, room2=room2)
        for room_id in (room, room2):
            await self.json_call("POST", f"{CLIENT}/join/{quote(room_id)}", {}, as_user="bob")
        self.variables["media"] = await self.upload(b"first media", "one.txt")
        self.variables["media2"] = await self.upload(b"second media!", "two.txt")
        for n in range(3):
            sent = await self.json_call(
                "PUT",
                f"{CLIENT}/rooms/{quote(room)}/send/m.room.message/t{n}",
                {"msgtype": "m.text", "body": f"message {n}"},
                as_user="alice",
            )
            self.variables.setdefault("first_message", sent["event_id"])
        await self.json_call(
            "PUT",
            f"{CLIENT}/rooms/{quote(room)}/send/m.room.message/file",
            {
                "msgtype": "m.file",
                "body": "one.txt",
                "url": f"mxc://{self.variables['server']}/{self.variables['media']}",
            },
            as_user="alice",
        )
        await self.json_call(
            "PUT",
            f"{CLIENT}/user/{quote(alice)}/account_data/org.example.global",
            {"a": 1},
            as_user="alice",
        )
        await self.json_call(
            "PUT",
            f"{CLIENT}/user/{quote(alice)}/rooms/{quote(room)}/account_data/org.example.room",
            {"b": 2},
            as_user="alice",
        )

    # ----- the session ----------------------------------------------------------------------

    def _fill(self, value: Any, in_path: bool = False) -> Any:
        if isinstance(value, str):
            for name, known in self.variables.items():
                value = value.replace("{" + name + "}", quote(known, safe="") if in_path else known)
            return value
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        return value

    async def run(self, step: Step) -> Outcome:
        path = self._fill(step.path, in_path=True)
        if not path.startswith("/_matrix/"):
            path = ADMIN + path
        token = self.tokens[step.as_user] if step.as_user else None
        deadline = time.monotonic() + 20
        while True:
            r = await self.call(step.method, path, self._fill(step.body), None, None, token)
            try:
                body = r.json
            except ValueError:
                body = None
            if step.until is None or r.code != 200 or step.until(body):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label}: {step.name}: still {body!r}")
            await task.deferLater(reactor, 0.2, lambda: None)
        for variable, key in step.save.items():
            if r.code == 200:
                self.variables[variable] = body[key]
        errcode = body.get("errcode") if isinstance(body, dict) and r.code >= 400 else None
        return Outcome(r.code, errcode, self.shape(body, step))

    def shape(self, value: Any, step: Step, path: str = "") -> Any:
        """The keys of `value`, recursively (ID keys replaced by their placeholders); a
        list's shape is the merged shape of its items; a scalar's is its type's name
        (null's is None)."""
        if path in step.opaque:
            return None
        if isinstance(value, dict):
            if path in step.id_keyed:
                merged_values: Any = None
                for item in value.values():
                    merged_values = _merge(merged_values, self.shape(item, step, path + ".*"))
                return {"*": merged_values} if value else {}
            return {
                self._key(k): self.shape(v, step, f"{path}.{k}" if path else k)
                for k, v in value.items()
            }
        if isinstance(value, list):
            merged: Any = None
            for item in value:
                merged = _merge(merged, self.shape(item, step, path + "[]"))
            return [merged]
        if value is None:
            return None
        return type(value).__name__

    def _key(self, key: str) -> str:
        for name, known in sorted(self.variables.items(), key=lambda kv: -len(kv[1])):
            if len(known) > 3:
                key = key.replace(known, "{" + name + "}")
        if key and key[0] in "@!$#" and "{" not in key:
            return key[0] + "..."
        return key


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _merge(a.get(k), b.get(k)) for k in a.keys() | b.keys()}
    return a if a is not None else b


def compare_shapes(step: str, synapse: Any, heddle: Any, path: str = "") -> list[str]:
    """Where two shapes differ, as `step: path: ...` lines not excused by `ALLOWED`."""
    problems: list[str] = []
    if isinstance(synapse, dict) and isinstance(heddle, dict):
        for key in sorted(synapse.keys() ^ heddle.keys()):
            where = f"{path}.{key}" if path else key
            if (step, where) not in ALLOWED:
                side = "Synapse" if key in synapse else "Heddle"
                problems.append(f"{step}: {where}: only {side} has it")
        for key in sorted(synapse.keys() & heddle.keys()):
            where = f"{path}.{key}" if path else key
            problems += compare_shapes(step, synapse[key], heddle[key], where)
    elif isinstance(synapse, list) and isinstance(heddle, list):
        # An empty list has no item shape: compare items only when both have some.
        if synapse[0] is not None and heddle[0] is not None:
            problems += compare_shapes(step, synapse[0], heddle[0], path + "[]")
    elif isinstance(synapse, str) and isinstance(heddle, str):
        # Both scalars: their JSON types (null, which any field may be, matches any).
        if synapse != heddle and (step, path) not in ALLOWED:
            problems.append(f"{step}: {path}: {synapse} vs {heddle}")
    elif synapse is not None and heddle is not None:
        if (step, path or "body") not in ALLOWED:
            problems.append(f"{step}: {path or 'body'}: {synapse!r} vs {heddle!r}")
    return problems


def compare(synapse: list[Outcome], heddle: list[Outcome]) -> list[str]:
    problems: list[str] = []
    for step, s, h in zip(SESSION, synapse, heddle, strict=True):
        if s.code != h.code:
            # An allowed status difference excuses the rest of the answer too.
            if (step.name, "status") not in ALLOWED:
                problems.append(f"{step.name}: status Synapse {s.code} Heddle {h.code}")
            continue
        if s.errcode != h.errcode and (step.name, "errcode") not in ALLOWED:
            problems.append(f"{step.name}: errcode Synapse {s.errcode} Heddle {h.errcode}")
        if s.code < 400:
            problems += compare_shapes(step.name, s.shape, h.shape)
    return problems


# Synapse's outcomes, recorded once per test process.
_synapse_outcomes: list[Outcome] | None = None


async def _run_session(server: Server) -> list[Outcome]:
    await server.populate()
    return [await server.run(step) for step in SESSION]


async def _synapse_session(work_dir: Path) -> list[Outcome]:
    global _synapse_outcomes
    if _synapse_outcomes is None:
        peer = SynapsePeer(work_dir, extra_config={"server_notices": NOTICES})
        await peer.start()
        try:
            _synapse_outcomes = await _run_session(_synapse_server(peer))
        finally:
            await peer.stop()
    return _synapse_outcomes


def _synapse_server(peer: SynapsePeer) -> Server:
    async def call(
        method: str,
        path: str,
        body: Any,
        raw: bytes | None,
        content_type: str | None,
        token: str | None,
    ) -> Response:
        headers = Headers({b"User-Agent": [b"heddle-tests"]})
        if token is not None:
            headers.setRawHeaders(b"Authorization", [f"Bearer {token}".encode()])
        payload = (
            raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        )
        if payload is not None:
            headers.setRawHeaders(b"Content-Type", [(content_type or "application/json").encode()])
        d = peer.agent().request(
            method.encode(),
            (peer.base_url + path).encode(),
            headers,
            BytesProducer(payload) if payload is not None else None,
        )
        d.addTimeout(30, reactor)
        response = await d
        return Response(response.code, response.headers, await readBody(response))

    return Server("Synapse", peer.server_name, peer.registration_shared_secret, call)


@on_both_engines
class AdminSessionVsSynapse(AdminTestCase):
    timeout = 300
    config_overrides = {"server_notices": NOTICES}

    async def setUp(self) -> None:
        require_synapse()
        await super().setUp()

    def _heddle_server(self) -> Server:
        async def call(
            method: str,
            path: str,
            body: Any,
            raw: bytes | None,
            content_type: str | None,
            token: str | None,
        ) -> Response:
            headers = {"Content-Type": content_type} if content_type else None
            return await self.request(method, path, body, token=token, raw=raw, headers=headers)

        # What tests/harness.py's make_config sets.
        return Server("Heddle", SERVER_NAME, "test-shared-secret", call)

    async def test_same_session_same_answers(self) -> None:
        synapse = await _synapse_session(Path(self.mktemp()))
        heddle = await _run_session(self._heddle_server())
        problems = compare(synapse, heddle)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))
