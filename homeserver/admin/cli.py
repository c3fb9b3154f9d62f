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


def _q(value: str) -> str:
    return quote(value, safe="")


# command -> (help, arguments, how its request is made).
def _commands() -> dict[str, tuple[str, list[tuple[str, dict[str, Any]]], Callable[[Any], Call]]]:
    user = ("user_id", {"help": "a local user ID, e.g. @alice:example.org"})
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
        "notice": (
            "send a server notice to a user",
            [user, ("text", {"help": "the notice's text"})],
            lambda a: Call("POST", f"{ADMIN}/v1/send_server_notice", {
                "user_id": a.user_id, "content": {"msgtype": "m.server_notice", "body": a.text}}),
        ),
        "reports": (
            "abuse reports: list them (newest first), show one, delete one",
            [("action", {"choices": ["list", "show", "delete"]}),
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
        call = _commands()[args.admin_command][2](args)
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
        try:
            print(json.dumps(_request(args.url, call, token), indent=2, sort_keys=True))
        finally:
            if logged_in:
                _request(args.url, Call("POST", f"{CLIENT}/logout", {}), token)
        return 0
    except AdminCliError as e:
        print(f"heddle admin: {e}", file=sys.stderr)
        return 1
