"""Which versions of the Matrix client-server spec Heddle advertises in /versions.

A client reading `versions` assumes everything a listed version has, and spec versions are
cumulative: v1.12 has all of v1.11. So the table below lists, for each version, the
endpoints it added (from the spec's own list, `endpoints.tsv`), and a version is advertised
only while every endpoint of it and of every version before it is in the route table, and
while its other changes (behaviour, not routes) have been checked against Heddle
(`checked`). The first version that fails ends the list.

`NOT_SERVED` names the endpoints Heddle leaves out on purpose, each allowed by the spec to
be missing: they count for no version. Flipping a version on is setting its `checked` once
what it changes has been looked at; new endpoints turn on by themselves when routed.
`tests/test_spec_versions.py` has one test per version naming what it lacks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# (method, path template as the spec writes it)
Endpoint = tuple[str, str]

NOT_SERVED: dict[Endpoint, str] = {
    # "If the homeserver does not support OAuth 2.0 API, 404 M_UNRECOGNIZED" (spec).
    ("GET", "/_matrix/client/v1/auth_metadata"): "OAuth 2.0 delegation is not supported",
    # Single sign-on is one login flow among others; /login does not offer it.
    ("GET", "/_matrix/client/v3/login/sso/redirect"): "no single sign-on",
    ("GET", "/_matrix/client/v3/login/sso/redirect/{idpId}"): "no single sign-on",
    # For application services, which Heddle does not support.
    ("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping"): "no application services",
    ("PUT", "/_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}"): (
        "no application services"
    ),
    # Optional in the spec (`m.account_moderation`); Heddle's admins lock and suspend
    # through Synapse's admin API.
    ("GET", "/_matrix/client/v1/admin/lock/{userId}"): "Synapse's admin API instead",
    ("PUT", "/_matrix/client/v1/admin/lock/{userId}"): "Synapse's admin API instead",
    ("GET", "/_matrix/client/v1/admin/suspend/{userId}"): "Synapse's admin API instead",
    ("PUT", "/_matrix/client/v1/admin/suspend/{userId}"): "Synapse's admin API instead",
    # Served by policy servers (or any web server), not homeservers.
    ("GET", "/.well-known/matrix/policy_server"): "not a policy server",
}


@dataclass(frozen=True)
class SpecVersion:
    name: str
    # The endpoints this version added (none for versions that only changed behaviour).
    endpoints: tuple[Endpoint, ...] = ()
    # Whether what it changed besides endpoints has been checked against Heddle.
    checked: bool = True
    # What it brought, for the reader.
    about: str = ""
    # For a checked version, the tests (`tests.module.Class.test_name`) showing the
    # client-facing changes besides endpoints that Heddle implements.
    verified_by: tuple[str, ...] = ()


# The endpoints of r0 (the tsv gives them no version).
R0_ENDPOINTS: tuple[Endpoint, ...] = (
    ("GET", "/.well-known/matrix/client"),
    ("GET", "/_matrix/client/v3/account/3pid"),
    ("POST", "/_matrix/client/v3/account/3pid/add"),
    ("POST", "/_matrix/client/v3/account/3pid/bind"),
    ("POST", "/_matrix/client/v3/account/3pid/delete"),
    ("POST", "/_matrix/client/v3/account/3pid/email/requestToken"),
    ("POST", "/_matrix/client/v3/account/3pid/msisdn/requestToken"),
    ("POST", "/_matrix/client/v3/account/3pid/unbind"),
    ("POST", "/_matrix/client/v3/account/deactivate"),
    ("POST", "/_matrix/client/v3/account/password"),
    ("POST", "/_matrix/client/v3/account/password/email/requestToken"),
    ("POST", "/_matrix/client/v3/account/password/msisdn/requestToken"),
    ("GET", "/_matrix/client/v3/account/whoami"),
    ("GET", "/_matrix/client/v3/admin/whois/{userId}"),
    ("GET", "/_matrix/client/v3/capabilities"),
    ("POST", "/_matrix/client/v3/createRoom"),
    ("POST", "/_matrix/client/v3/delete_devices"),
    ("GET", "/_matrix/client/v3/devices"),
    ("DELETE", "/_matrix/client/v3/devices/{deviceId}"),
    ("GET", "/_matrix/client/v3/devices/{deviceId}"),
    ("PUT", "/_matrix/client/v3/devices/{deviceId}"),
    ("GET", "/_matrix/client/v3/directory/list/room/{roomId}"),
    ("PUT", "/_matrix/client/v3/directory/list/room/{roomId}"),
    ("DELETE", "/_matrix/client/v3/directory/room/{roomAlias}"),
    ("GET", "/_matrix/client/v3/directory/room/{roomAlias}"),
    ("PUT", "/_matrix/client/v3/directory/room/{roomAlias}"),
    ("GET", "/_matrix/client/v3/events"),
    ("POST", "/_matrix/client/v3/join/{roomIdOrAlias}"),
    ("GET", "/_matrix/client/v3/joined_rooms"),
    ("GET", "/_matrix/client/v3/keys/changes"),
    ("POST", "/_matrix/client/v3/keys/claim"),
    ("POST", "/_matrix/client/v3/keys/query"),
    ("POST", "/_matrix/client/v3/keys/upload"),
    ("GET", "/_matrix/client/v3/login"),
    ("POST", "/_matrix/client/v3/login"),
    ("POST", "/_matrix/client/v3/logout"),
    ("POST", "/_matrix/client/v3/logout/all"),
    ("GET", "/_matrix/client/v3/notifications"),
    ("GET", "/_matrix/client/v3/presence/{userId}/status"),
    ("PUT", "/_matrix/client/v3/presence/{userId}/status"),
    ("GET", "/_matrix/client/v3/profile/{userId}"),
    ("GET", "/_matrix/client/v3/profile/{userId}/{keyName}"),
    ("PUT", "/_matrix/client/v3/profile/{userId}/{keyName}"),
    ("GET", "/_matrix/client/v3/publicRooms"),
    ("POST", "/_matrix/client/v3/publicRooms"),
    ("GET", "/_matrix/client/v3/pushers"),
    ("POST", "/_matrix/client/v3/pushers/set"),
    ("GET", "/_matrix/client/v3/pushrules/"),
    ("GET", "/_matrix/client/v3/pushrules/global/"),
    ("DELETE", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"),
    ("POST", "/_matrix/client/v3/register"),
    ("GET", "/_matrix/client/v3/register/available"),
    ("POST", "/_matrix/client/v3/register/email/requestToken"),
    ("POST", "/_matrix/client/v3/register/msisdn/requestToken"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/aliases"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/ban"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/context/{eventId}"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/event/{eventId}"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/forget"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/initialSync"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/invite"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/join"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/joined_members"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/kick"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/leave"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/members"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/messages"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/read_markers"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"),
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/report/{eventId}"),
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/state"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/typing/{userId}"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/unban"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/upgrade"),
    ("POST", "/_matrix/client/v3/search"),
    ("PUT", "/_matrix/client/v3/sendToDevice/{eventType}/{txnId}"),
    ("GET", "/_matrix/client/v3/sync"),
    ("GET", "/_matrix/client/v3/thirdparty/location"),
    ("GET", "/_matrix/client/v3/thirdparty/location/{protocol}"),
    ("GET", "/_matrix/client/v3/thirdparty/protocol/{protocol}"),
    ("GET", "/_matrix/client/v3/thirdparty/protocols"),
    ("GET", "/_matrix/client/v3/thirdparty/user"),
    ("GET", "/_matrix/client/v3/thirdparty/user/{protocol}"),
    ("GET", "/_matrix/client/v3/user/{userId}/account_data/{type}"),
    ("PUT", "/_matrix/client/v3/user/{userId}/account_data/{type}"),
    ("POST", "/_matrix/client/v3/user/{userId}/filter"),
    ("GET", "/_matrix/client/v3/user/{userId}/filter/{filterId}"),
    ("POST", "/_matrix/client/v3/user/{userId}/openid/request_token"),
    ("GET", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("PUT", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("GET", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags"),
    ("DELETE", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"),
    ("PUT", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"),
    ("POST", "/_matrix/client/v3/user_directory/search"),
    ("GET", "/_matrix/client/v3/voip/turnServer"),
    ("GET", "/_matrix/client/versions"),
    ("POST", "/_matrix/media/v3/upload"),
)

SPEC_VERSIONS: tuple[SpecVersion, ...] = (
    SpecVersion("r0.5.0", R0_ENDPOINTS, about="the r0 API"),
    SpecVersion("r0.6.0"),
    SpecVersion("r0.6.1"),
    SpecVersion(
        "v1.1",
        (
            ("POST", "/_matrix/client/v3/keys/device_signing/upload"),
            ("POST", "/_matrix/client/v3/keys/signatures/upload"),
            ("POST", "/_matrix/client/v3/knock/{roomIdOrAlias}"),
            ("DELETE", "/_matrix/client/v3/room_keys/keys"),
            ("GET", "/_matrix/client/v3/room_keys/keys"),
            ("PUT", "/_matrix/client/v3/room_keys/keys"),
            ("DELETE", "/_matrix/client/v3/room_keys/keys/{roomId}"),
            ("GET", "/_matrix/client/v3/room_keys/keys/{roomId}"),
            ("PUT", "/_matrix/client/v3/room_keys/keys/{roomId}"),
            ("DELETE", "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"),
            ("GET", "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"),
            ("PUT", "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"),
            ("GET", "/_matrix/client/v3/room_keys/version"),
            ("POST", "/_matrix/client/v3/room_keys/version"),
            ("DELETE", "/_matrix/client/v3/room_keys/version/{version}"),
            ("GET", "/_matrix/client/v3/room_keys/version/{version}"),
            ("PUT", "/_matrix/client/v3/room_keys/version/{version}"),
        ),
        about="key backup, cross-signing, knocking, SSO (not served: see NOT_SERVED)",
    ),
    SpecVersion(
        "v1.2",
        (
            ("GET", "/_matrix/client/v1/register/m.login.registration_token/validity"),
            ("GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy"),
        ),
        about="spaces' hierarchy, registration tokens",
    ),
    SpecVersion(
        "v1.3",
        (
            ("GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}"),
            ("GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}"),
            ("GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"),
            ("POST", "/_matrix/client/v3/refresh"),
        ),
        about="refresh tokens, relations",
    ),
    SpecVersion(
        "v1.4",
        (("GET", "/_matrix/client/v1/rooms/{roomId}/threads"),),
        about="threads",
    ),
    SpecVersion("v1.5"),
    SpecVersion(
        "v1.6",
        (("GET", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event"),),
        about="jumping to a date",
    ),
    SpecVersion(
        "v1.7",
        (
            ("POST", "/_matrix/client/v1/login/get_token"),
            ("POST", "/_matrix/media/v1/create"),
            ("PUT", "/_matrix/media/v3/upload/{serverName}/{mediaId}"),
        ),
        about="login tokens, asynchronous media uploads",
    ),
    SpecVersion("v1.8"),
    SpecVersion("v1.9"),
    SpecVersion(
        "v1.10",
        (("GET", "/.well-known/matrix/support"),),
        about="support contacts (.well-known/matrix/support)",
    ),
    SpecVersion(
        "v1.11",
        (
            ("GET", "/_matrix/client/v1/media/config"),
            ("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}"),
            ("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}"),
            ("GET", "/_matrix/client/v1/media/preview_url"),
            ("GET", "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"),
        ),
        about="authenticated media",
    ),
    # v1.12 (no new endpoints): `via` on join and knock (`server_name` still read), account
    # locking (401 M_USER_LOCKED with soft_logout), guests on the authenticated media
    # endpoints; room account data of any type (m.marked_unread) is stored as it comes, and
    # the 403s on profile look-ups are optional.
    SpecVersion(
        "v1.12",
        about="via on join/knock, account locking, guests' authenticated media",
        verified_by=(
            "tests.test_federation_heddle.TwoHeddles.test_history_backfilled_from_the_other_side",
            "tests.test_admin_restrictions.LockTests"
            ".test_locked_user_gets_user_locked_everywhere_but_logout",
            "tests.test_guest_access.GuestEndpointTests"
            ".test_media_through_the_authenticated_endpoints",
        ),
    ),
    # v1.13: the requestToken error codes (M_THREEPID_MEDIUM_NOT_SUPPORTED, M_INVALID_PARAM,
    # M_THREEPID_IN_USE), suspension (403 M_USER_SUSPENDED on the recommended actions), an
    # event report's reason may be left out, one-time keys claimed in upload order, and
    # (server-server, seen by clients as typing and receipts) server ACLs applied to EDUs.
    # Reply fallbacks were only ever the sending client's doing.
    SpecVersion(
        "v1.13",
        (("POST", "/_matrix/client/v3/rooms/{roomId}/report"),),
        about="reporting rooms, suspension, ACLs on EDUs",
        verified_by=(
            "tests.test_threepids.AddThreepidTests.test_bad_input",
            "tests.test_admin_restrictions.SuspensionTests"
            ".test_suspended_user_may_read_but_not_act",
            "tests.test_reports.ClientReportingTests"
            ".test_event_report_reason_and_score_are_optional",
            "tests.test_e2e_keys.OneTimeKeyTests"
            ".test_upload_counts_and_claims_one_at_a_time_in_upload_order",
            "tests.test_federation_acl.AclAppliesToEdus"
            ".test_typing_and_receipts_of_a_denied_server_are_ignored",
        ),
    ),
    # v1.14: reporting users is its one client-facing change; the `server_name` parameter of
    # join and knock, now removed, is still read (harmless), and third-party protocols
    # (`instance_id`) come from application services, which Heddle does not have.
    SpecVersion(
        "v1.14",
        (("POST", "/_matrix/client/v3/users/{userId}/report"),),
        about="reporting users",
        verified_by=("tests.test_reports.ClientReportingTests.test_user_reports",),
    ),
    # v1.15: room summaries, and `encryption` / `room_version` in them and in the hierarchy;
    # createRoom's `topic` also as an `m.topic` block; the user directory's "public" rooms
    # are those with a public join rule or world-readable history. The OAuth 2.0 API is
    # left out as the spec allows (auth_metadata is in NOT_SERVED: 404 M_UNRECOGNIZED says
    # "not supported", and clients then use the legacy login API, which Heddle has).
    SpecVersion(
        "v1.15",
        (("GET", "/_matrix/client/v1/room_summary/{roomIdOrAlias}"),),
        about="room summaries, rich topics (OAuth 2.0 API not offered: see NOT_SERVED)",
        verified_by=(
            "tests.test_spaces.RoomSummaryTests"
            ".test_encryption_and_room_version_in_summary_and_hierarchy",
            "tests.test_rooms.CreateRoomTests.test_events_are_sent_in_the_spec_order",
            "tests.test_user_directory.UserDirectoryTests"
            ".test_public_and_world_readable_rooms_follow_state_changes",
        ),
    ),
    # v1.16: /sync's `use_state_after` (`state_after` instead of `state` in joined and left
    # rooms: the state up to the end of the timeline), extended profiles and
    # `m.profile_fields`, `m.tz`, `format` on GET /state/{eventType}/{stateKey}, room version
    # 12 (additional_creators on createRoom's trusted_private_chat and on upgrade, creators'
    # power, IDs without a domain, tombstone at 150), `m.room.create` in local invites'
    # stripped state.
    SpecVersion(
        "v1.16",
        (("DELETE", "/_matrix/client/v3/profile/{userId}/{keyName}"),),
        about="use_state_after on /sync, extended profiles, room version 12",
        verified_by=(
            "tests.test_sync_state_after.SyncStateAfter.test_initial_sync_with_and_without_the_flag",
            "tests.test_sync_state_after.SyncStateAfter.test_incremental_with_a_gap",
            "tests.test_sync_state_after.SyncStateAfter.test_left_room",
            "tests.test_profile_fields.ProfileFields.test_set_get_and_delete_custom_fields",
            "tests.test_rooms.CreateRoomTests"
            ".test_trusted_private_chat_gives_invitees_the_creators_power",
            "tests.test_room_upgrades.RoomUpgradeTests.test_to_v12_with_additional_creators",
        ),
    ),
    # v1.17: its client-facing changes are clarifications and application-service or OAuth
    # matters (the OAuth 2.0 API is not offered: see NOT_SERVED); peeking through /events
    # needs `room_id`, as Heddle already required.
    SpecVersion(
        "v1.17",
        about="clarifications; application-service and OAuth 2.0 matters (not offered)",
        verified_by=("tests.test_legacy_events.PeekTests.test_peek_into_world_readable_room",),
    ),
    # v1.18: invite blocking (`m.invite_permission_config`: 403 M_INVITE_BLOCKED on local
    # invites, createRoom's invitees and federation invites; blocked invites kept out of
    # /sync), redactions through /send, reports answering 200 whoever is reported. The
    # admin lock/suspend endpoints and the OAuth 2.0 capabilities are left out
    # (NOT_SERVED), the `m.forget_forced_upon_leave` capability is optional.
    SpecVersion(
        "v1.18",
        about="invite blocking, redactions through /send",
        verified_by=(
            "tests.test_invite_blocking.LocalInviteBlockingTests"
            ".test_invite_endpoint_follows_the_config_at_once",
            "tests.test_invite_blocking.LocalInviteBlockingTests"
            ".test_member_state_event_invite_is_blocked",
            "tests.test_invite_blocking.LocalInviteBlockingTests"
            ".test_create_room_with_a_blocking_invitee_is_refused",
            "tests.test_invite_blocking.LocalInviteBlockingTests"
            ".test_invalid_or_unsupported_config_receives_invites",
            "tests.test_invite_blocking.LocalInviteBlockingTests"
            ".test_sync_hides_invites_received_before_the_block",
            "tests.test_invite_blocking.FederatedInviteBlockingTests"
            ".test_invite_over_federation_is_refused_while_blocked",
            "tests.test_rooms.RedactionTests"
            ".test_redaction_through_send_in_v10_moves_redacts_to_the_top",
            "tests.test_reports.ClientReportingTests"
            ".test_reporting_a_user_never_says_whether_they_exist",
        ),
    ),
    # v1.19: mutual rooms are served and `unsigned.replaces_state` is sent; its other
    # changes (image packs, `m.key_backup`, history sharing, directory order) are the
    # clients' or free to the server.
    SpecVersion(
        "v1.19",
        (("GET", "/_matrix/client/v1/mutual_rooms"),),
        about="rooms shared with another user, unsigned.replaces_state",
        verified_by=(
            "tests.test_mutual_rooms.MutualRooms.test_only_rooms_both_are_joined_to",
            "tests.test_rooms.StateTests.test_unsigned_replaces_state_names_the_replaced_event",
        ),
    ),
)

# Values for the spec's path parameters when asking whether the route table serves a path:
# plausible ones, so that a route only taking certain values (a profile route for
# displayname and avatar_url alone) does not pass for the general endpoint.
EXAMPLE_PATH_VALUES = {
    "userId": "@someone:example.org",
    "roomId": "!room:example.org",
    "roomIdOrAlias": "!room:example.org",
    "roomAlias": "#alias:example.org",
    "eventId": "$event",
    "eventType": "m.room.message",
    "stateKey": "state_key",
    "txnId": "txn",
    "serverName": "example.org",
    "mediaId": "media",
    "fileName": "file.txt",
    "filterId": "0",
    "keyName": "m.tz",
    "kind": "override",
    "ruleId": "rule",
    "receiptType": "m.read",
    "relType": "m.annotation",
    "sessionId": "session",
    "version": "1",
    "tag": "u.tag",
    "type": "org.example.type",
    "protocol": "irc",
    "deviceId": "DEVICE",
    "idpId": "idp",
    "appserviceId": "appservice",
    "networkId": "network",
}
_PARAMETER = re.compile(r"\{([A-Za-z]+)\}")


def example_path(template: str) -> str:
    """`template` with each `{name}` replaced by its example value."""
    return _PARAMETER.sub(lambda m: EXAMPLE_PATH_VALUES[m.group(1)], template)


def missing_endpoints(version: SpecVersion, serves: Callable[[str, str], bool]) -> list[Endpoint]:
    """The endpoints of `version` (not of earlier ones) that `serves(method, path)` says
    are not routed, those in NOT_SERVED left out."""
    return [
        (method, path)
        for method, path in version.endpoints
        if (method, path) not in NOT_SERVED and not serves(method, example_path(path))
    ]


def advertised_versions(serves: Callable[[str, str], bool]) -> list[str]:
    """The versions to advertise: each while it and every version before it is complete."""
    advertised = []
    for version in SPEC_VERSIONS:
        if not version.checked or missing_endpoints(version, serves):
            break
        advertised.append(version.name)
    return advertised
