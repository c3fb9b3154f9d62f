"""Pushers: the client API (GET /pushers, POST /pushers/set) and the entry points that hand
notifications to delivery (`homeserver.push.delivery`).

A pusher is identified by (user, app_id, pushkey). Setting one again updates it in place;
`kind: null` deletes it. Pushers belong to the device whose access token set them: deleting
the device, which logging out does, deletes them (in the device store's transaction), and
deactivating the account deletes them all.

Wiring: push-rule evaluation calls `on_notification` after the event is committed, once per
local user whose actions say `notify`; whatever lowers a user's unread count (a receipt)
calls `on_counts_changed`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.canonical import encode_canonical_json
from homeserver.events.model import Event
from homeserver.push.delivery import PushDelivery
from storage.stores.pushers import NewPusher, Pusher, PusherStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

KINDS = ("http", "email")
EMAIL_APP_ID = "m.email"
# The spec's limits.
MAX_APP_ID_CHARS = 64
MAX_PUSHKEY_BYTES = 512
# Ours, so one pusher cannot be made arbitrarily large.
MAX_NAME_CHARS = 256
MAX_LANG_CHARS = 64
MAX_DATA_BYTES = 8 * 1024
NOTIFY_PATH = "/_matrix/push/v1/notify"


@dataclass(frozen=True)
class PusherDeletion:
    app_id: str
    pushkey: str


@dataclass(frozen=True)
class PusherSetting:
    kind: str
    app_id: str
    pushkey: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: JsonDict
    append: bool


def _bad_type(name: str, expected: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, f"'{name}' must be {expected}")


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def _string(body: Mapping[str, Any], name: str, max_chars: int) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise _bad_type(name, "a string")
    if len(value) > max_chars:
        raise _invalid(f"'{name}' may not be longer than {max_chars} characters")
    return value


def _check_gateway_url(data: Mapping[str, Any]) -> None:
    if "url" not in data:
        raise MatrixError(400, Codes.MISSING_PARAM, "'data.url' is required for HTTP pushers")
    url = data["url"]
    if not isinstance(url, str):
        raise _invalid("'data.url' must be a string")
    if not url.isascii() or any(c.isspace() for c in url):
        # Not sendable as it is; a client must encode it.
        raise _invalid("'data.url' must be an ASCII URL without spaces")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise _invalid("'data.url' is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid("'data.url' must be an http or https URL")
    if parts.path != NOTIFY_PATH:
        raise _invalid(f"'data.url' must have the path {NOTIFY_PATH}")


def parse_set_pusher(body: Mapping[str, Any]) -> PusherSetting | PusherDeletion:
    """Check a POST /pushers/set body: 400 M_MISSING_PARAM for what is missing,
    M_BAD_JSON for a value of the wrong type, M_INVALID_PARAM for one out of bounds."""
    missing = [name for name in ("kind", "app_id", "pushkey") if name not in body]
    if missing:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameters: {', '.join(missing)}")
    app_id = _string(body, "app_id", MAX_APP_ID_CHARS)
    pushkey = body["pushkey"]
    if not isinstance(pushkey, str):
        raise _bad_type("pushkey", "a string")
    if len(pushkey.encode("utf-8")) > MAX_PUSHKEY_BYTES:
        raise _invalid(f"'pushkey' may not be longer than {MAX_PUSHKEY_BYTES} bytes")
    kind = body["kind"]
    if kind is None:
        return PusherDeletion(app_id, pushkey)
    if not isinstance(kind, str):
        raise _bad_type("kind", "a string or null")
    if kind not in KINDS:
        raise _invalid(f"Unknown pusher kind '{kind}'; supported: {', '.join(KINDS)}")
    missing = [
        name
        for name in ("app_display_name", "device_display_name", "lang", "data")
        if name not in body
    ]
    if missing:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameters: {', '.join(missing)}")
    data = body["data"]
    if not isinstance(data, dict):
        raise _bad_type("data", "an object")
    if len(encode_canonical_json(data)) > MAX_DATA_BYTES:
        raise _invalid(f"'data' may not be larger than {MAX_DATA_BYTES} bytes")
    if "format" in data and not isinstance(data["format"], str):
        raise _bad_type("data.format", "a string")
    profile_tag = body.get("profile_tag")
    if profile_tag is not None:
        profile_tag = _string(body, "profile_tag", MAX_NAME_CHARS)
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise _bad_type("append", "a boolean")
    if kind == "http":
        _check_gateway_url(data)
    else:
        if app_id != EMAIL_APP_ID:
            raise _invalid(f"E-mail pushers have the app_id '{EMAIL_APP_ID}'")
        local, _, domain = pushkey.rpartition("@")
        if not local or not domain:
            raise _invalid("The pushkey of an e-mail pusher is an e-mail address")
    return PusherSetting(
        kind=kind,
        app_id=app_id,
        pushkey=pushkey,
        app_display_name=_string(body, "app_display_name", MAX_NAME_CHARS),
        device_display_name=_string(body, "device_display_name", MAX_NAME_CHARS),
        profile_tag=profile_tag,
        lang=_string(body, "lang", MAX_LANG_CHARS),
        data=data,
        append=append,
    )


def serialize_pusher(pusher: Pusher) -> JsonDict:
    """A pusher as GET /pushers lists it."""
    serialized: JsonDict = {
        "pushkey": pusher.pushkey,
        "kind": pusher.kind,
        "app_id": pusher.app_id,
        "app_display_name": pusher.app_display_name,
        "device_display_name": pusher.device_display_name,
        "lang": pusher.lang,
        "data": pusher.data,
    }
    if pusher.profile_tag is not None:
        serialized["profile_tag"] = pusher.profile_tag
    return serialized


class PusherHandler:
    def __init__(self, clock: Clock, store: PusherStore, delivery: PushDelivery) -> None:
        self._clock = clock
        self._store = store
        self.delivery = delivery

    # ----- the client API --------------------------------------------------------------------

    async def get_pushers(self, user_id: str) -> list[JsonDict]:
        return [serialize_pusher(p) for p in await self._store.get_pushers(user_id)]

    async def set_pusher(self, requester: Requester, body: Mapping[str, Any]) -> None:
        request = parse_set_pusher(body)
        if isinstance(request, PusherDeletion):
            # Deleting a pusher that does not exist is no error: the client's wish holds.
            await self._store.delete_pusher(requester.user_id, request.app_id, request.pushkey)
            logger.info(
                "pusher deleted for %s (app_id %s)", requester.user_id, request.app_id
            )
            return
        await self._store.set_pusher(
            NewPusher(
                user_id=requester.user_id,
                access_token_id=requester.token_id,
                device_id=requester.device_id,
                kind=request.kind,
                app_id=request.app_id,
                pushkey=request.pushkey,
                app_display_name=request.app_display_name,
                device_display_name=request.device_display_name,
                profile_tag=request.profile_tag,
                lang=request.lang,
                data=request.data,
            ),
            self._clock.time_msec(),
            # Without `append`, the pushkey now belongs to this user alone (the spec: other
            # users' pushers with this app_id and pushkey are removed).
            replace_others=not request.append,
        )
        self.delivery.pusher_set(requester.user_id, request.kind)
        logger.info(
            "%s pusher set for %s (app_id %s)", request.kind, requester.user_id, request.app_id
        )

    # ----- entry points for push evaluation ------------------------------------------------

    async def on_notification(
        self,
        user_id: str,
        room_id: str,
        event: Event,
        actions: Sequence[Any],
        counts: Mapping[str, int],
    ) -> None:
        """`event` (committed) notifies `user_id` with these push-rule `actions`; `counts`
        are the user's counts with it ({"unread": n, "missed_calls": m}). Queued for each of
        the user's HTTP pushers and sent in the background; returns once queued."""
        await self.delivery.on_notification(user_id, room_id, event, actions, counts)

    async def on_counts_changed(self, user_id: str, counts: Mapping[str, int]) -> None:
        """The user's unread count went down (they read something): a badge-only update to
        each of their HTTP pushers."""
        await self.delivery.on_counts_changed(user_id, counts)
