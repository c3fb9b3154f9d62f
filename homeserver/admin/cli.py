"""`heddle admin ...`: the admin API from a shell, for an admin with no client at hand.

It talks to a running server over HTTP (the same endpoints, checks and audit log as any
admin tool), authenticated by an admin's access token (`--token` or `HEDDLE_ADMIN_TOKEN`),
or by logging in as an admin (`--user`, the password prompted for; the session is logged
out again afterwards). Answers are printed as JSON; an error prints the server's errcode
and message and exits with status 1. Plain blocking HTTP (urllib): no reactor runs here.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

ADMIN = "/_synapse/admin"
CLIENT = "/_matrix/client/v3"
DEFAULT_URL = "http://localhost:8008"


class AdminCliError(Exception):
    pass


@dataclass
class Call:
    method: str
    path: str
    body: Any = None


# Sends one call, answering the server's JSON (AdminCliError for an error answer).
Send = Callable[[Call], Any]


@dataclass
class Steps:
    """An action of several calls: `run` makes them with `send` and answers what to print."""

    run: Callable[[Send], Any]


Action = Callable[[Any], Call | Steps]


def _q(value: str) -> str:
    return quote(value, safe="")


# command -> (help, arguments, how its request is made).
def _commands() -> dict[str, tuple[str, list[tuple[str, dict[str, Any]]], Action]]:
    user = ("user_id", {"help": "a local user ID, e.g. @alice:example.org"})
    room = ("room_id", {"help": "a room ID, e.g. !abc:example.org"})
    media = ("mxc", {"help": "a media's mxc:// URI (or server/media_id)"})
    page = [("--from", {"dest": "offset", "default": "0", "help": "start at this offset"}),
            ("--limit", {"default": "100", "help": "at most this many"})]
    return {
        "version": ("the server's version", [], lambda a: Call("GET", f"{ADMIN}/v1/server_version")),
        "users": (
            "list users (paged: --from, --limit)",
            [("--name", {"help": "only users whose ID or display name contain this"}),
             ("--deactivated", {"action": "store_true", "help": "include deactivated users"}),
             ("--from", {"dest": "offset", "default": "0", "help": "start at this offset"}),
             ("--limit", {"default": "100", "help": "at most this many"})],
            lambda a: Call("GET", f"{ADMIN}/v2/users?" + urlencode(
                {k: v for k, v in (("name", a.name), ("from", a.offset), ("limit", a.limit),
                                   ("deactivated", "true" if a.deactivated else None))
                 if v is not None})),
        ),
        "user": ("show one user", [user], lambda a: Call("GET", f"{ADMIN}/v2/users/{_q(a.user_id)}")),
        "deactivate": (
            "deactivate a user (leaves their rooms)",
            [user, ("--erase", {"action": "store_true", "help": "also erase their profile"})],
            lambda a: Call("POST", f"{ADMIN}/v1/deactivate/{_q(a.user_id)}", {"erase": a.erase}),
        ),
        "reset-password": (
            "set a user's password (prompted for) and log out their devices",
            [user, ("--keep-devices", {"action": "store_true", "help": "keep them logged in"})],
            lambda a: Call("POST", f"{ADMIN}/v1/reset_password/{_q(a.user_id)}", {
                "new_password": _new_password(), "logout_devices": not a.keep_devices}),
        ),
        "lock": ("lock a user's account", [user], lambda a: _flag("lock", a.user_id, True)),
        "unlock": ("unlock it", [user], lambda a: _flag("lock", a.user_id, False)),
        "suspend": ("suspend a user's account", [user], lambda a: _flag("suspend", a.user_id, True)),
        "unsuspend": ("end the suspension", [user], lambda a: _flag("suspend", a.user_id, False)),
        "destinations": (
            "list federation destinations and their backoff",
            [("--from", {"dest": "offset", "default": "0", "help": "start at this offset"}),
             ("--limit", {"default": "100", "help": "at most this many"})],
            lambda a: Call("GET", f"{ADMIN}/v1/federation/destinations?"
                           + urlencode({"from": a.offset, "limit": a.limit})),
        ),
        "reset-destination": (
            "end a destination's backoff and send to it now",
            [("destination", {"help": "a server name"})],
            lambda a: Call("POST", f"{ADMIN}/v1/federation/destinations/{_q(a.destination)}"
                           "/reset_connection", {}),
        ),
        "rooms": (
            "list rooms (paged: --from, --limit)",
            [("--search", {"help": "only rooms whose name, alias or ID contain this"}),
             ("--order-by", {"help": "name (default), joined_members, state_events, ..."}),
             *page],
            lambda a: Call("GET", f"{ADMIN}/v1/rooms?" + urlencode(
                {k: v for k, v in (("search_term", a.search), ("order_by", a.order_by),
                                   ("from", a.offset), ("limit", a.limit)) if v is not None})),
        ),
        "room": ("show one room", [room], lambda a: Call("GET", f"{ADMIN}/v1/rooms/{_q(a.room_id)}")),
        "delete-room": (
            "delete a room: its local members leave, then it is purged (waits for the end)",
            [room,
             ("--block", {"action": "store_true", "help": "also block it from being joined"}),
             ("--no-purge", {"action": "store_true", "help": "keep it in the database"}),
             ("--force-purge", {"action": "store_true",
                                "help": "purge even if local users could not be removed"}),
             ("--new-room-user", {"help": "a local user to create a room the members move to"}),
             ("--room-name", {"help": "that new room's name"}),
             ("--message", {"help": "the message that user sends there"}),
             ("--no-wait", {"action": "store_true", "help": "print the delete ID, do not wait"}),
             ("--poll-interval", {"type": float, "default": 1.0,
                                  "help": "seconds between status checks (default 1)"})],
            _delete_room,
        ),
        "block-room": ("block a room (known here or not)", [room],
                       lambda a: Call("PUT", f"{ADMIN}/v1/rooms/{_q(a.room_id)}/block", {"block": True})),
        "unblock-room": ("unblock it", [room],
                         lambda a: Call("PUT", f"{ADMIN}/v1/rooms/{_q(a.room_id)}/block", {"block": False})),
        "tokens": (
            "list registration tokens",
            [("--valid", {"choices": ["true", "false"], "help": "only valid (or invalid) ones"})],
            lambda a: Call("GET", f"{ADMIN}/v1/registration_tokens"
                           + (f"?valid={a.valid}" if a.valid is not None else "")),
        ),
        "create-token": (
            "create a registration token (a random one unless --token)",
            # Not `token`: that is the admin's access token.
            [("--token", {"dest": "new_token", "metavar": "TOKEN", "help": "the token itself"}),
             ("--uses", {"type": int, "help": "how many registrations it allows (default any)"}),
             ("--expiry-ms", {"type": int, "help": "when it expires, ms since the epoch"}),
             ("--length", {"type": int, "help": "a random token's length"})],
            lambda a: Call("POST", f"{ADMIN}/v1/registration_tokens/new", {
                k: v for k, v in (("token", a.new_token), ("uses_allowed", a.uses),
                                  ("expiry_time", a.expiry_ms), ("length", a.length))
                if v is not None}),
        ),
        "delete-token": (
            "delete a registration token",
            [("registration_token", {"metavar": "token", "help": "the token"})],
            lambda a: Call("DELETE", f"{ADMIN}/v1/registration_tokens/{_q(a.registration_token)}"),
        ),
        "quarantine-media": (
            "quarantine a media item (nobody can download it any more)", [media],
            lambda a: Call("POST", f"{ADMIN}/v1/media/quarantine/{_media_path(a.mxc)}", {}),
        ),
        "unquarantine-media": (
            "end a media item's quarantine", [media],
            lambda a: Call("POST", f"{ADMIN}/v1/media/unquarantine/{_media_path(a.mxc)}", {}),
        ),
        "delete-media": (
            "delete a local media item", [media],
            lambda a: Call("DELETE", f"{ADMIN}/v1/media/{_media_path(a.mxc)}"),
        ),
        "purge-remote-media": (
            "delete cached copies of other servers' media fetched before a time",
            [("--before-ts", {"type": int, "required": True,
                              "help": "ms since the epoch: fetched before this"})],
            lambda a: Call("POST", f"{ADMIN}/v1/purge_media_cache?before_ts={a.before_ts}", {}),
        ),
        "notice": (
            "send a server notice to a user",
            [user, ("text", {"help": "the notice's text"})],
            lambda a: Call("POST", f"{ADMIN}/v1/send_server_notice", {
                "user_id": a.user_id, "content": {"msgtype": "m.server_notice", "body": a.text}}),
        ),
        "reports": (
            "abuse reports: list them (newest first), show one, delete one",
            [("action", {"choices": ["list", "show", "delete"],
                         "help": "list the reports, show one or delete one"}),
             ("report_id", {"nargs": "?", "help": "the report's ID (show, delete)"}),
             ("--kind", {"choices": list(_REPORT_FILTERS), "default": "event",
                         "help": "reports about events (the default), rooms or users"}),
             ("--from", {"dest": "offset", "default": "0", "help": "start at this offset"}),
             ("--limit", {"default": "100", "help": "at most this many"}),
             ("--dir", {"choices": ["b", "f"], "default": "b",
                        "help": "newest first (b, the default) or oldest first (f)"}),
             ("--user-id", {"help": "only reports filed by this user"}),
             ("--room-id", {"help": "only reports about this room (event and room reports)"}),
             ("--sender", {"help": "only reports about this user's events (event reports)"}),
             ("--target", {"help": "only reports about this user (user reports)"})],
            _reports_call,
        ),
    }


# Each kind of report: the filters its list takes (option -> query parameter).
_REPORT_FILTERS = {
    "event": {"user_id": "user_id", "room_id": "room_id", "sender": "event_sender_user_id"},
    "room": {"user_id": "user_id", "room_id": "room_id"},
    "user": {"user_id": "user_id", "target": "target_user_id"},
}


def _reports_call(a: Any) -> Call:
    path = f"{ADMIN}/v1/{a.kind}_reports"
    if a.action != "list":
        if a.report_id is None:
            raise AdminCliError(f"reports {a.action} needs a report ID")
        return Call("GET" if a.action == "show" else "DELETE", f"{path}/{_q(a.report_id)}")
    allowed = _REPORT_FILTERS[a.kind]
    params = {"from": a.offset, "limit": a.limit, "dir": a.dir}
    for option in ("user_id", "room_id", "sender", "target"):
        value = getattr(a, option)
        if value is None:
            continue
        if option not in allowed:
            flag = "--" + option.replace("_", "-")
            raise AdminCliError(f"{a.kind} reports cannot be filtered with {flag}")
        params[allowed[option]] = value
    return Call("GET", f"{path}?" + urlencode(params))


def _media_path(mxc: str) -> str:
    """`server/media_id` from `mxc://server/media_id` (or from itself)."""
    server, _, media_id = mxc.removeprefix("mxc://").partition("/")
    if not server or not media_id or "/" in media_id:
        raise AdminCliError(f"not a media URI: {mxc!r} (want mxc://server/media_id)")
    return f"{_q(server)}/{_q(media_id)}"


# A delete is over once its status is one of these.
_DELETE_OVER = ("complete", "failed")


def _delete_room(a: Any) -> Steps:
    body: dict[str, Any] = {
        "block": a.block, "purge": not a.no_purge, "force_purge": a.force_purge,
    }
    for key, value in (("new_room_user_id", a.new_room_user),
                       ("room_name", a.room_name), ("message", a.message)):
        if value is not None:
            body[key] = value

    def run(send: Send) -> Any:
        delete_id = send(Call("DELETE", f"{ADMIN}/v2/rooms/{_q(a.room_id)}", body))["delete_id"]
        if a.no_wait:
            return {"delete_id": delete_id}
        status_call = Call("GET", f"{ADMIN}/v2/rooms/delete_status/{_q(delete_id)}")
        while (status := send(status_call))["status"] not in _DELETE_OVER:
            print(f"heddle admin: delete {delete_id}: {status['status']}", file=sys.stderr)
            time.sleep(a.poll_interval)
        if status["status"] == "failed":
            raise AdminCliError(f"the delete failed: {status.get('error')}")
        return status

    return Steps(run)


def _flag(kind: str, user_id: str, on: bool) -> Call:
    key = "locked" if kind == "lock" else "suspended"
    return Call("PUT", f"/_matrix/client/v1/admin/{kind}/{_q(user_id)}", {key: on})


def _new_password() -> str:
    password = getpass.getpass("New password: ")
    if password != getpass.getpass("Confirm new password: "):
        raise AdminCliError("passwords do not match")
    return password


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "admin",
        help="run an admin action against a running server",
        description="Run an admin action against a running Heddle over its admin API, as an "
        "admin: with an access token (--token or HEDDLE_ADMIN_TOKEN) or by logging in "
        "(--user; the password is prompted for).",
    )
    parser.add_argument("--url", default=os.environ.get("HEDDLE_URL", DEFAULT_URL),
                        help=f"the server's client API (default $HEDDLE_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("HEDDLE_ADMIN_TOKEN"),
                        help="an admin's access token (default $HEDDLE_ADMIN_TOKEN)")
    parser.add_argument("--user", help="log in as this admin instead of giving a token")
    actions = parser.add_subparsers(dest="admin_command", title="actions", required=True)
    for name, (help_text, arguments, _) in _commands().items():
        action = actions.add_parser(name, help=help_text, description=help_text)
        for flag, options in arguments:
            action.add_argument(flag, **options)


def _request(url: str, call: Call, token: str | None) -> Any:
    data = json.dumps(call.body).encode() if call.body is not None else None
    request = urllib.request.Request(url.rstrip("/") + call.path, data=data, method=call.method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read())
            reason = f"{body.get('errcode', e.code)}: {body.get('error', '')}"
        except ValueError:
            reason = f"HTTP {e.code}"
        raise AdminCliError(f"{call.method} {call.path.split('?')[0]} failed: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise AdminCliError(f"cannot reach {url}: {e}") from None


def run(args: argparse.Namespace, password: Callable[[], str] = getpass.getpass) -> int:
    """Run the admin action `args` names; the exit status."""
    try:
        action = _commands()[args.admin_command][2](args)
        token, logged_in = args.token, False
        if args.user is not None:
            login = _request(args.url, Call("POST", f"{CLIENT}/login", {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": args.user},
                "password": password(),
            }), None)
            token, logged_in = login["access_token"], True
        if token is None:
            raise AdminCliError("give --token (or set HEDDLE_ADMIN_TOKEN), or --user to log in")
        def send(call: Call) -> Any:
            return _request(args.url, call, token)

        try:
            answer = action.run(send) if isinstance(action, Steps) else send(action)
            print(json.dumps(answer, indent=2, sort_keys=True))
        finally:
            if logged_in:
                _request(args.url, Call("POST", f"{CLIENT}/logout", {}), token)
        return 0
    except AdminCliError as e:
        print(f"heddle admin: {e}", file=sys.stderr)
        return 1
