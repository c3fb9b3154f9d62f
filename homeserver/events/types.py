"""Room event types the server itself reads or writes: defined here once, imported everywhere."""

from __future__ import annotations

# The state the auth rules read.
CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
ALIASES = "m.room.aliases"

# Other state the server reads or writes.
CANONICAL_ALIAS = "m.room.canonical_alias"
HISTORY_VISIBILITY = "m.room.history_visibility"
GUEST_ACCESS = "m.room.guest_access"
NAME = "m.room.name"
TOPIC = "m.room.topic"
AVATAR = "m.room.avatar"
ENCRYPTION = "m.room.encryption"
SERVER_ACL = "m.room.server_acl"
TOMBSTONE = "m.room.tombstone"
# A space's children (state key: the child room ID).
SPACE_CHILD = "m.space.child"

# Message events.
REDACTION = "m.room.redaction"
MESSAGE = "m.room.message"
