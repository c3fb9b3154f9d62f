"""Pushers: GET /pushers and POST /pushers/set, and the delivery of notifications to push
gateways (retries, restarts, rejected pushkeys, badge-only updates).

Spec: api/client-server/pusher.yaml, client-server-api/modules/push.md, and the Push
Gateway API (api/push-gateway/push_notifier.yaml).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from homeserver.app import HomeServer
from homeserver.push.gateway import (
    GatewayResponseError,
    priority,
    rejected_pushkeys,
    tweaks_from_actions,
)
from tests.harness import make_config, on_both_engines, password_auth
from tests.push_gateway import ERROR, GARBAGE, HANG, OK, PushGateway, Reject
from tests.room_helpers import API, RoomTestCase, User, q

PUSHERS = f"{API}/pushers"
SET = f"{API}/pushers/set"
URL = "https://push.example.org/_matrix/push/v1/notify"


def http_pusher(pushkey: str = "key-1", url: str = URL, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "http",
        "app_id": "org.example.app.ios",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Alice's phone",
        "lang": "en-US",
        "data": {"url": url},
    }
    body.update(extra)
    return body


class PusherTestCase(RoomTestCase):
    async def set_pusher(self, user: User, body: dict[str, Any]) -> None:
        r = await self.request("POST", SET, body, token=user.token)
        self.assertEqual(r.code, 200, r)  # type: ignore[attr-defined]
        self.assertEqual(r.json, {})  # type: ignore[attr-defined]

    async def pushers(self, user: User) -> list[dict[str, Any]]:
        r = await self.request("GET", PUSHERS, token=user.token)
        self.assertEqual(r.code, 200, r)  # type: ignore[attr-defined]
        return r.json["pushers"]

    async def pushkeys(self, user: User) -> list[str]:
        return [p["pushkey"] for p in await self.pushers(user)]

    async def login_user(self, localpart: str, device_id: str) -> User:
        session = await self.login(localpart, device_id=device_id)
        return User(session["user_id"], session["access_token"], session["device_id"])


@on_both_engines
class PusherApiTests(PusherTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def assertRefused(self, body: Any, errcode: str, code: int = 400) -> dict[str, Any]:
        r = await self.request("POST", SET, body, token=self.alice.token)
        return self.assertError(r, code, errcode)

    async def test_no_pushers_at_first(self):
        self.assertEqual(await self.pushers(self.alice), [])

    async def test_set_list_update_and_delete(self):
        data = {"url": URL, "format": "event_id_only", "org.example.custom": {"n": 1}}
        await self.set_pusher(self.alice, http_pusher(data=data, profile_tag="xyz"))
        self.assertEqual(
            await self.pushers(self.alice),
            [
                {
                    "pushkey": "key-1",
                    "kind": "http",
                    "app_id": "org.example.app.ios",
                    "app_display_name": "Example",
                    "device_display_name": "Alice's phone",
                    "profile_tag": "xyz",
                    "lang": "en-US",
                    "data": data,
                }
            ],
        )
        # Bob sees none of Alice's.
        self.assertEqual(await self.pushers(self.bob), [])
        # The same app_id and pushkey again updates the pusher in place.
        await self.set_pusher(self.alice, http_pusher(device_display_name="Renamed", lang="fr"))
        [pusher] = await self.pushers(self.alice)
        self.assertEqual(
            (pusher["device_display_name"], pusher["lang"], pusher["data"]),
            ("Renamed", "fr", {"url": URL}),
        )
        self.assertNotIn("profile_tag", pusher)
        # Another pushkey is another pusher.
        await self.set_pusher(self.alice, http_pusher("key-2"))
        self.assertEqual(await self.pushkeys(self.alice), ["key-1", "key-2"])
        # kind null deletes (the other fields are not needed); deleting again is fine.
        delete = {"kind": None, "app_id": "org.example.app.ios", "pushkey": "key-1"}
        await self.set_pusher(self.alice, delete)
        self.assertEqual(await self.pushkeys(self.alice), ["key-2"])
        await self.set_pusher(self.alice, delete)
        self.assertEqual(await self.pushkeys(self.alice), ["key-2"])

    async def test_email_pusher_is_stored(self):
        body = {
            "kind": "email",
            "app_id": "m.email",
            "pushkey": "alice@example.org",
            "app_display_name": "Email",
            "device_display_name": "alice@example.org",
            "lang": "en",
            "data": {},
        }
        await self.set_pusher(self.alice, body)
        [pusher] = await self.pushers(self.alice)
        self.assertEqual((pusher["kind"], pusher["pushkey"]), ("email", "alice@example.org"))
        await self.assertRefused({**body, "pushkey": "not an address"}, "M_INVALID_PARAM")
        await self.assertRefused({**body, "app_id": "org.example.mail"}, "M_INVALID_PARAM")

    async def test_without_append_other_users_pushers_with_the_pushkey_go(self):
        await self.set_pusher(self.alice, http_pusher("shared"))
        await self.set_pusher(self.alice, http_pusher("alices-own"))
        # append: true adds Bob's beside Alice's.
        await self.set_pusher(self.bob, http_pusher("shared", append=True))
        self.assertEqual(await self.pushkeys(self.alice), ["shared", "alices-own"])
        self.assertEqual(await self.pushkeys(self.bob), ["shared"])
        # The same pushkey for another app is another pusher, which stays.
        await self.set_pusher(self.alice, http_pusher("shared", app_id="org.example.other"))
        # Without append (false is the default), the pushkey is Bob's alone now.
        await self.set_pusher(self.bob, http_pusher("shared"))
        self.assertEqual(
            [(p["app_id"], p["pushkey"]) for p in await self.pushers(self.alice)],
            [("org.example.app.ios", "alices-own"), ("org.example.other", "shared")],
        )
        self.assertEqual(await self.pushkeys(self.bob), ["shared"])

    async def test_missing_parameters(self):
        for name in ("kind", "app_id", "pushkey"):
            body = http_pusher()
            del body[name]
            error = await self.assertRefused(body, "M_MISSING_PARAM")
            self.assertIn(name, error["error"])
        body = http_pusher()
        del body["lang"], body["data"]
        error = await self.assertRefused(body, "M_MISSING_PARAM")
        self.assertEqual(error["error"], "Missing parameters: lang, data")
        for name in ("app_display_name", "device_display_name"):
            body = http_pusher()
            del body[name]
            await self.assertRefused(body, "M_MISSING_PARAM")
        await self.assertRefused(http_pusher(data={"format": "event_id_only"}), "M_MISSING_PARAM")
        self.assertEqual(await self.pushers(self.alice), [])

    async def test_invalid_parameters(self):
        await self.assertRefused(http_pusher(kind="carrier-pigeon"), "M_INVALID_PARAM")
        for url in (
            "ftp://push.example.org/_matrix/push/v1/notify",
            "https://push.example.org/_matrix/push/v1/notify/",
            "https://push.example.org/notify",
            "https:///_matrix/push/v1/notify",
            "https://push.example.org:port/_matrix/push/v1/notify",
            "https://püsh.example.org/_matrix/push/v1/notify",
            "not a url",
        ):
            await self.assertRefused(http_pusher(url=url), "M_INVALID_PARAM")
        await self.assertRefused(http_pusher(data={"url": 5}), "M_INVALID_PARAM")
        # app_id: 64 characters at most; pushkey: 512 bytes (not characters) at most.
        await self.assertRefused(http_pusher(app_id="a" * 65), "M_INVALID_PARAM")
        await self.assertRefused(http_pusher("é" * 257), "M_INVALID_PARAM")
        await self.assertRefused(http_pusher(lang="x" * 65), "M_INVALID_PARAM")
        await self.assertRefused(
            http_pusher(data={"url": URL, "blob": "x" * 9000}), "M_INVALID_PARAM"
        )
        self.assertEqual(await self.pushers(self.alice), [])
        # At the limits, and plain http (gateways on a private network), are fine.
        await self.set_pusher(self.alice, http_pusher("é" * 256, app_id="a" * 64))
        await self.set_pusher(
            self.alice, http_pusher("k", url="http://10.1.2.3:5000/_matrix/push/v1/notify")
        )
        self.assertEqual(len(await self.pushers(self.alice)), 2)

    async def test_values_of_the_wrong_type(self):
        for body in (
            http_pusher(kind=5),
            http_pusher(app_id=["x"]),
            http_pusher(pushkey=None),
            http_pusher(data="https://push.example.org/_matrix/push/v1/notify"),
            http_pusher(append="yes"),
            http_pusher(lang=1),
            http_pusher(profile_tag={}),
            http_pusher(data={"url": URL, "format": 1}),
        ):
            await self.assertRefused(body, "M_BAD_JSON")
        r = await self.request("POST", SET, raw=b"{not json", token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")
        self.assertEqual(await self.pushers(self.alice), [])

    async def test_requires_an_access_token(self):
        self.assertError(await self.request("GET", PUSHERS), 401, "M_MISSING_TOKEN")
        self.assertError(await self.request("POST", SET, http_pusher()), 401, "M_MISSING_TOKEN")

    async def test_logging_out_removes_the_devices_pushers(self):
        phone = await self.login_user("alice", "PHONE")
        laptop = await self.login_user("alice", "LAPTOP")
        await self.set_pusher(phone, http_pusher("phone-key"))
        await self.set_pusher(laptop, http_pusher("laptop-key"))
        r = await self.request("POST", f"{API}/logout", {}, token=phone.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.pushkeys(laptop), ["laptop-key"])

    async def test_deleting_a_device_removes_its_pushers(self):
        phone = await self.login_user("alice", "PHONE")
        laptop = await self.login_user("alice", "LAPTOP")
        await self.set_pusher(phone, http_pusher("phone-key"))
        await self.set_pusher(laptop, http_pusher("laptop-key"))
        r = await self.request(
            "DELETE", f"{API}/devices/PHONE", {"auth": password_auth()}, token=laptop.token
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.pushkeys(laptop), ["laptop-key"])

    async def test_deactivation_removes_every_pusher(self):
        phone = await self.login_user("alice", "PHONE")
        await self.set_pusher(phone, http_pusher("phone-key"))
        await self.set_pusher(self.alice, http_pusher("other-key"))
        await self.set_pusher(self.bob, http_pusher("bobs-key"))
        r = await self.request(
            "POST", f"{API}/account/deactivate", {"auth": password_auth()}, token=phone.token
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.hs.pusher_store.get_pushers(self.alice.user_id), [])
        self.assertEqual(await self.pushkeys(self.bob), ["bobs-key"])


NOTIFY_LOUDLY = ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]


def unhook_push_evaluation(hs: HomeServer) -> None:
    """These tests hand notifications to the pushers themselves: what push evaluation would
    hand them is left out (tests/test_push_counts.py tests that)."""
    hs.push_actions.notification_listeners.remove(hs.pusher_bridge.on_notification)
    hs.receipts.read_listeners.remove(hs.pusher_bridge.read_moved)


@on_both_engines
class PusherDeliveryTests(PusherTestCase):
    config_overrides = {
        "pushers": {
            "initial_backoff_ms": 100,
            "gateway_timeout_ms": 1000,
            # The test gateways are on loopback, which is blocked by default.
            "ip_range_allowlist": ["127.0.0.1/32"],
        }
    }

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        unhook_push_evaluation(self.hs)
        self.gateway = PushGateway.start(self)
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        r = await self.request(
            "PUT",
            f"{API}/profile/{q(self.bob.user_id)}/displayname",
            {"displayname": "Major Tom"},
            token=self.bob.token,
        )
        assert r.code == 200, r
        self.room_id = await self.create_room(
            self.bob, name="Mission Control", preset="public_chat"
        )
        r = await self.request("POST", f"{API}/join/{q(self.room_id)}", {}, token=self.alice.token)
        assert r.code == 200, r

    async def message(self, body: str = "I'm floating") -> Any:
        r = await self.send(self.bob, self.room_id, {"msgtype": "m.text", "body": body})
        assert r.code == 200, r
        event = await self.hs.event_store.get_event(r.json["event_id"])
        assert event is not None
        return event

    async def notify(self, event: Any, actions: Any = NOTIFY_LOUDLY, unread: int = 2) -> None:
        await self.hs.pushers.on_notification(
            self.alice.user_id, event.room_id, event, actions, {"unread": unread, "missed_calls": 0}
        )

    async def queued(self) -> int:
        total = 0
        for pusher in await self.hs.pusher_store.get_pushers(self.alice.user_id):
            total += await self.hs.pusher_store.count_queued(pusher.id)
        return total

    async def restart(self) -> None:
        """Stop the server and start another on the same database."""
        await self.restart_server(unhook_push_evaluation)

    async def test_a_notification_is_delivered_in_full(self):
        await self.set_pusher(
            self.alice, http_pusher(url=self.gateway.url, data={"url": self.gateway.url, "n": 1})
        )
        event = await self.message()
        before_s = self.hs.clock.time()
        await self.notify(event)
        [received] = await self.gateway.wait_for(1)
        self.assertEqual(received.path, "/_matrix/push/v1/notify")
        notification = received.notification
        device = notification.pop("devices")
        self.assertEqual(
            notification,
            {
                "event_id": event.event_id,
                # The event ID under its old name, which gateways written for Synapse read.
                "id": event.event_id,
                "room_id": self.room_id,
                "type": "m.room.message",
                "sender": self.bob.user_id,
                "sender_display_name": "Major Tom",
                "room_name": "Mission Control",
                "content": {"msgtype": "m.text", "body": "I'm floating"},
                "prio": "high",
                # Zero counts are left out.
                "counts": {"unread": 2},
            },
        )
        [entry] = device
        pushkey_ts = entry.pop("pushkey_ts")
        self.assertEqual(
            entry,
            {
                "app_id": "org.example.app.ios",
                "pushkey": "key-1",
                "data": {"n": 1},
                "tweaks": {"sound": "default", "highlight": True},
            },
        )
        # In seconds.
        self.assertLessEqual(abs(pushkey_ts - before_s), 60)
        await self.hs.push_delivery.idle()
        self.assertEqual(await self.queued(), 0)

    async def test_an_invite_says_whose_membership_it_is(self):
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        room_id = await self.create_room(self.bob)
        r = await self.request(
            "POST", f"{API}/rooms/{q(room_id)}/invite", {"user_id": self.alice.user_id},
            token=self.bob.token,
        )
        assert r.code == 200, r
        invite_id = await self.hs.state_store.get_current_state_event_id(
            room_id, "m.room.member", self.alice.user_id
        )
        invite = await self.hs.event_store.get_event(invite_id)
        await self.notify(invite)
        [received] = await self.gateway.wait_for(1)
        notification = received.notification
        # The spec's user_is_target, and the membership that Sygnal passes on to devices.
        self.assertEqual(
            (notification["type"], notification["user_is_target"], notification["membership"]),
            ("m.room.member", True, "invite"),
        )
        self.assertEqual(notification["content"]["membership"], "invite")
        self.assertEqual(notification["id"], invite.event_id)

    async def test_event_id_only_format(self):
        data = {"url": self.gateway.url, "format": "event_id_only"}
        await self.set_pusher(self.alice, http_pusher(data=data))
        event = await self.message()
        await self.notify(event, actions=["notify"], unread=1)
        [received] = await self.gateway.wait_for(1)
        notification = received.notification
        self.assertEqual(
            set(notification), {"event_id", "room_id", "counts", "prio", "devices"}
        )
        self.assertEqual(
            (notification["event_id"], notification["room_id"], notification["counts"]),
            (event.event_id, self.room_id, {"unread": 1}),
        )
        # No sound, no highlight: low priority.
        self.assertEqual(notification["prio"], "low")
        self.assertEqual(notification["devices"][0]["data"], {"format": "event_id_only"})
        self.assertEqual(notification["devices"][0]["tweaks"], {})

    async def test_nothing_is_pushed_without_notify_or_an_http_pusher(self):
        event = await self.message()
        # No pusher yet: nothing is queued.
        await self.notify(event)
        email = {
            "kind": "email", "app_id": "m.email", "pushkey": "alice@example.org",
            "app_display_name": "Email", "device_display_name": "Email", "lang": "en",
            "data": {},
        }
        await self.set_pusher(self.alice, email)
        await self.notify(event)
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        # Actions without notify (dont_notify means nothing), and the user's own events.
        await self.notify(event, actions=[])
        await self.notify(event, actions=["dont_notify"])
        await self.hs.pushers.on_notification(
            self.bob.user_id, self.room_id, event, ["notify"], {"unread": 1}
        )
        self.assertEqual(await self.queued(), 0)
        await self.hs.push_delivery.idle()
        self.assertEqual(self.gateway.received, [])
        # The check is real: with notify, it is pushed.
        await self.notify(event)
        await self.gateway.wait_for(1)

    async def test_a_gateway_that_fails_gets_the_notification_again(self):
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        # Down (500), then broken (200 with garbage), then up.
        self.gateway.answers = [ERROR, GARBAGE]
        event = await self.message()
        await self.notify(event)
        received = await self.gateway.wait_for(3)
        self.assertEqual(
            [r.notification["event_id"] for r in received], [event.event_id] * 3
        )
        await self.hs.push_delivery.idle()
        self.assertEqual(await self.queued(), 0)
        self.assertEqual(len(self.gateway.received), 3)
        # Notifications still go in order afterwards.
        second = await self.message("second")
        await self.notify(second)
        received = await self.gateway.wait_for(4)
        self.assertEqual(received[3].notification["event_id"], second.event_id)

    async def test_a_gateway_that_does_not_answer_holds_up_no_other_pusher(self):
        slow = self.gateway
        fast = PushGateway.start(self)
        await self.set_pusher(self.alice, http_pusher("slow-key", url=slow.url))
        await self.set_pusher(self.alice, http_pusher("fast-key", url=fast.url))
        slow.answers = [HANG]
        event = await self.message()
        await self.notify(event)
        await slow.wait_for(1)
        await fast.wait_for(1)
        # The fast gateway was served while the slow one had not answered (its retry comes
        # only after the 1 s timeout).
        self.assertEqual(len(slow.received), 1)
        received = await slow.wait_for(2)
        self.assertEqual(received[1].notification["event_id"], event.event_id)
        await self.hs.push_delivery.idle()
        self.assertEqual(await self.queued(), 0)
        self.assertEqual(len(fast.received), 1)

    async def test_a_rejected_pushkey_loses_its_pusher(self):
        await self.set_pusher(self.alice, http_pusher("expired", url=self.gateway.url))
        await self.set_pusher(self.alice, http_pusher("valid", url=self.gateway.url))
        self.gateway.default = Reject(["expired"])
        await self.notify(await self.message())
        received = await self.gateway.wait_for(2)
        self.assertEqual(
            sorted(r.notification["devices"][0]["pushkey"] for r in received),
            ["expired", "valid"],
        )
        await self.hs.push_delivery.idle()
        self.assertEqual(await self.pushkeys(self.alice), ["valid"])
        self.assertEqual(await self.queued(), 0)
        # Only the valid one hears of the next.
        self.gateway.default = OK
        await self.notify(await self.message("next"))
        received = await self.gateway.wait_for(3)
        await self.hs.push_delivery.idle()
        self.assertEqual(len(self.gateway.received), 3)
        self.assertEqual(received[2].notification["devices"][0]["pushkey"], "valid")

    async def test_badge_only_update(self):
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        await self.hs.pushers.on_counts_changed(
            self.alice.user_id, {"unread": 0, "missed_calls": 0}
        )
        [received] = await self.gateway.wait_for(1)
        notification = received.notification
        self.assertEqual(notification["devices"][0]["pushkey"], "key-1")
        del notification["devices"]
        # No event; unread is there even at zero (that clears the badge).
        self.assertEqual(notification, {"counts": {"unread": 0}})

    async def test_a_newer_badge_update_replaces_a_queued_one(self):
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        [pusher] = await self.hs.pusher_store.get_pushers(self.alice.user_id)
        store, now = self.hs.pusher_store, self.hs.clock.time_msec()
        # Straight into the queue (no delivery loop is woken): two badge updates and an event.
        await store.enqueue(self.alice.user_id, {"counts": {"unread": 3}}, {}, True, now)
        await store.enqueue(self.alice.user_id, {"event_id": "$e"}, {}, False, now)
        await store.enqueue(self.alice.user_id, {"counts": {"unread": 1}}, {}, True, now)
        self.assertEqual(await store.count_queued(pusher.id), 2)
        queued = await store.next_queued(pusher.id)
        assert queued is not None
        self.assertEqual(queued[1].notification, {"event_id": "$e"})

    async def test_a_pushers_queue_keeps_the_newest_notifications(self):
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        [pusher] = await self.hs.pusher_store.get_pushers(self.alice.user_id)
        store, now = self.hs.pusher_store, self.hs.clock.time_msec()
        for n in range(4):
            await store.enqueue(
                self.alice.user_id, {"event_id": f"${n}"}, {}, False, now, keep_at_most=2
            )
        self.assertEqual(await store.count_queued(pusher.id), 2)
        queued = await store.next_queued(pusher.id)
        assert queued is not None
        self.assertEqual(queued[1].notification, {"event_id": "$2"})

    async def test_a_queued_notification_is_delivered_after_a_restart(self):
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        self.gateway.default = ERROR
        event = await self.message()
        await self.notify(event)
        await self.gateway.wait_for(1)
        await self.hs.stop()
        self.assertEqual(await self.queued_in_database(), 1)
        failed_attempts = len(self.gateway.received)
        self.gateway.default = OK
        await self.restart()
        received = await self.gateway.wait_for(failed_attempts + 1)
        self.assertEqual(received[-1].notification["event_id"], event.event_id)
        await self.hs.push_delivery.idle()
        self.assertEqual(await self.queued(), 0)
        # The new server knows the pusher: what comes next is pushed too.
        later = await self.message("later")
        await self.notify(later)
        received = await self.gateway.wait_for(failed_attempts + 2)
        self.assertEqual(received[-1].notification["event_id"], later.event_id)

    async def test_an_https_gateway_needs_a_trusted_certificate(self):
        # The gateway's certificate is self-signed: refused while certificates are checked
        # (the default), the notification staying queued for a retry.
        secure = PushGateway.start(self, tls=True)
        await self.set_pusher(self.alice, http_pusher(url=secure.url))
        await self.notify(await self.message())
        store = self.hs.pusher_store
        [pusher] = await store.get_pushers(self.alice.user_id)
        for _ in range(100):
            head = await store.next_queued(pusher.id)
            if head is not None and head[1].attempts >= 2:
                break
            await deferLater(reactor, 0.05)
        else:
            self.fail(f"not retried: {head}")
        self.assertEqual(secure.received, [])

    async def test_an_https_gateway_without_certificate_checks(self):
        # pushers.verify_tls off (test gateways with their own CA): delivered over https.
        await self.start_server(pushers={**self.config_overrides["pushers"], "verify_tls": False})
        self.alice = await self.user("alice")
        secure = PushGateway.start(self, tls=True)
        await self.set_pusher(self.alice, http_pusher(url=secure.url))
        event = await self.message_in_new_room()
        await self.notify(event)
        [received] = await secure.wait_for(1)
        self.assertEqual(received.notification["event_id"], event.event_id)

    async def test_a_gateway_on_a_blocked_address_is_not_contacted(self):
        await self.start_server(pushers={"initial_backoff_ms": 100})
        self.alice = await self.user("alice")
        # 127.0.0.1 is in the default block list; "localhost" resolves there too.
        await self.set_pusher(self.alice, http_pusher("by-address", url=self.gateway.url))
        by_name = self.gateway.url.replace("127.0.0.1", "localhost")
        await self.set_pusher(self.alice, http_pusher("by-name", url=by_name))
        await self.notify(await self.message_in_new_room())
        store = self.hs.pusher_store
        pushers = await store.get_pushers(self.alice.user_id)
        for _ in range(100):
            heads = [await store.next_queued(p.id) for p in pushers]
            if all(head is not None and head[1].attempts >= 2 for head in heads):
                break
            await deferLater(reactor, 0.05)
        else:
            self.fail(f"not retried: {heads}")
        # Refused before connecting: the gateway heard nothing, and it stays queued.
        self.assertEqual(self.gateway.received, [])

    async def test_stopping_waits_for_no_retry_and_no_gateway(self):
        await self.start_server(
            pushers={
                **self.config_overrides["pushers"],
                "initial_backoff_ms": 600_000,
                "gateway_timeout_ms": 600_000,
            }
        )
        self.alice = await self.user("alice")
        failing, hanging = self.gateway, PushGateway.start(self)
        failing.default, hanging.default = ERROR, HANG
        await self.set_pusher(self.alice, http_pusher("failing", url=failing.url))
        await self.set_pusher(self.alice, http_pusher("hanging", url=hanging.url))
        await self.notify(await self.message_in_new_room())
        await failing.wait_for(1)
        await hanging.wait_for(1)
        started = time.monotonic()
        await self.hs.stop()
        # Neither the ten-minute retry wait nor the ten-minute timeout held it up.
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(await self.queued_in_database(), 2)

    async def queued_in_database(self) -> int:
        """Rows in the queue, read with a server of our own (the test's is stopped)."""
        config = make_config(
            self.engine, Path(self.hs.config.data_dir), keep_database=True,
            **self.config_overrides,
        )
        reader = HomeServer(config, reactor, writer_lock=False)
        try:
            total = 0
            for pusher in await reader.pusher_store.get_pushers(self.alice.user_id):
                total += await reader.pusher_store.count_queued(pusher.id)
            return total
        finally:
            reader.db.close()

    async def test_nothing_is_queued_when_pushers_are_off(self):
        await self.start_server(pushers={"enabled": False})
        self.alice = await self.user("alice")
        await self.set_pusher(self.alice, http_pusher(url=self.gateway.url))
        await self.hs.pushers.on_notification(
            self.alice.user_id, "!room:test.heddle", await self.message_in_new_room(),
            ["notify"], {"unread": 1},
        )
        await self.hs.pushers.on_counts_changed(self.alice.user_id, {"unread": 0})
        self.assertEqual(await self.queued(), 0)

    async def message_in_new_room(self) -> Any:
        bob = await self.user("bob2")
        room_id = await self.create_room(bob)
        r = await self.send(bob, room_id)
        assert r.code == 200, r
        return await self.hs.event_store.get_event(r.json["event_id"])


class GatewayFunctionsTests(unittest.TestCase):
    def test_tweaks_from_actions(self):
        self.assertEqual(
            tweaks_from_actions(
                ["notify", {"set_tweak": "sound", "value": "bing"}, {"set_tweak": "highlight"},
                 {"set_tweak": "custom", "value": [1]}, {"set_tweak": 5}, "coalesce"]
            ),
            {"sound": "bing", "highlight": True, "custom": [1]},
        )
        self.assertEqual(
            tweaks_from_actions([{"set_tweak": "highlight", "value": False}]), {"highlight": False}
        )

    def test_priority(self):
        self.assertEqual(priority({"highlight": True}), "high")
        self.assertEqual(priority({"sound": "default"}), "high")
        self.assertEqual(priority({"highlight": False}), "low")
        self.assertEqual(priority({}), "low")

    def test_rejected_pushkeys(self):
        self.assertEqual(rejected_pushkeys(b'{"rejected": ["a", 5, "b"]}'), ["a", "b"])
        self.assertEqual(rejected_pushkeys(b"{}"), [])
        self.assertEqual(rejected_pushkeys(b'{"rejected": "a"}'), [])
        for garbage in (b"<html>", b"[]", b"\xff", b""):
            with self.assertRaises(GatewayResponseError):
                rejected_pushkeys(garbage)
