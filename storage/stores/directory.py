"""The published room directory and the user directory: the SQL behind both searches.

Two small stores. `RoomDirectoryStore` answers "which rooms are published, how many members
do they have, and what state describes them"; the handler filters and pages in memory (see
`homeserver.rooms.directory`). `UserDirectoryStore` answers "which users may this user find
by this term" in one query (see `search_users`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from homeserver.events.types import (
    AVATAR,
    CANONICAL_ALIAS,
    CREATE,
    GUEST_ACCESS,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    NAME,
    TOPIC,
)
from storage.database import Database, Transaction

# State that describes a room in the directory (all with an empty state key).
ROOM_SUMMARY_STATE_TYPES = (
    CREATE,
    NAME,
    TOPIC,
    AVATAR,
    CANONICAL_ALIAS,
    JOIN_RULES,
    HISTORY_VISIBILITY,
    GUEST_ACCESS,
)


@dataclass(frozen=True)
class PublishedRoom:
    room_id: str
    joined_members: int


@dataclass(frozen=True)
class UserDirectoryEntry:
    user_id: str
    display_name: str | None
    avatar_url: str | None


class RoomDirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_visibility(self, room_id: str) -> bool | None:
        """Whether the room is published; None if we do not know the room."""
        row = await self._db.run_interaction(
            "get_room_visibility",
            lambda txn: txn.select_one("SELECT is_public FROM rooms WHERE room_id = ?", (room_id,)),
        )
        return bool(row[0]) if row else None

    async def set_visibility(self, room_id: str, public: bool) -> bool:
        """Publish or unpublish the room; False if we do not know the room."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute("UPDATE rooms SET is_public = ? WHERE room_id = ?", (public, room_id))
            return txn.rowcount == 1

        return await self._db.run_interaction("set_room_visibility", txn_fn)

    async def get_published_rooms(self) -> list[PublishedRoom]:
        """Every published room with its number of joined members, in no particular order.

        One row per published room; each count is an index range scan of
        `current_state_members (room_id, membership)`, so the cost grows with the number
        of published rooms, not with the size of the server.
        """
        rows = await self._db.run_interaction(
            "get_published_rooms",
            lambda txn: txn.select_all(
                "SELECT r.room_id, (SELECT COUNT(*) FROM current_state_events m"
                "  WHERE m.room_id = r.room_id AND m.membership = 'join') AS joined"
                " FROM rooms r WHERE r.is_public = ?",
                (True,),
            ),
        )
        return [PublishedRoom(row[0], int(row[1])) for row in rows]

    async def get_summary_state_ids(
        self, room_ids: Collection[str]
    ) -> dict[str, dict[str, str]]:
        """room_id -> {event type -> event ID} of the current state in ROOM_SUMMARY_STATE_TYPES."""

        def txn_fn(txn: Transaction) -> dict[str, dict[str, str]]:
            result: dict[str, dict[str, str]] = {room_id: {} for room_id in room_ids}
            types = ",".join("?" for _ in ROOM_SUMMARY_STATE_TYPES)
            for room_id, event_type, event_id in txn.select_in_chunks(
                "SELECT room_id, type, event_id FROM current_state_events"
                f" WHERE room_id IN ({{in}}) AND type IN ({types}) AND state_key = ''",
                room_ids,
                args_after=ROOM_SUMMARY_STATE_TYPES,
            ):
                result[room_id][event_type] = event_id
            return result

        return await self._db.run_interaction("get_summary_state_ids", txn_fn)


def _like_escape(text: str) -> str:
    """`text` as a literal inside a LIKE pattern using `!` as the escape character."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search_users(
        self, searcher: str, terms: Sequence[str], limit: int | None
    ) -> list[UserDirectoryEntry]:
        """Users visible to `searcher` whose user ID or display name contains every term.

        Visible (client-server API "User Directory") means joined to a room that the
        searcher is joined to, or to a room whose join rule is `public` or whose history
        is `world_readable`. The searcher finds itself only through the latter, as in
        Synapse: sharing a private room with oneself is no reason to be listed. Deactivated accounts are left out. `terms` must be lower case;
        they are compared with SQL `LOWER()`, which folds ASCII on every engine (and all of
        Unicode only on some), so callers pass ASCII terms or re-check the rows.

        Ranked: users whose localpart or display name starts with the first term, then
        users with a display name, then by user ID. At most `limit` rows (None: all).

        How the query runs. The visible rooms are a union of (a) the searcher's joined
        rooms, an index lookup on `room_memberships_user`, and (b) rooms whose current
        join rules / history visibility event says so: a range of the
        `current_state_room_level` index (one entry per room and type), a text test of
        each event and a JSON read of the few that pass it. Their
        joined members come from the `current_state_members (room_id, membership)` index;
        accounts and profiles are primary-key joins. The term filter is a LIKE on
        those candidates, so the cost grows with the number of rooms and of visible
        members, and the result is cut to `limit` in the database. If that grows too
        large, the next step is a table of visible users with a folded search column kept
        up to date as state and profiles change.
        """

        def txn_fn(txn: Transaction) -> list[UserDirectoryEntry]:
            join_rule = txn.engine.json_text("e.json", "content", "join_rule")
            visibility = txn.engine.json_text("e.json", "content", "history_visibility")
            args: list[object] = [
                searcher,
                searcher,
                "join",
                '%"public"%',
                "public",
                '%"world_readable"%',
                "world_readable",
                False,
            ]
            conditions = []
            for term in terms:
                conditions.append(
                    " AND (LOWER(m.state_key) LIKE ? ESCAPE '!'"
                    " OR LOWER(p.displayname) LIKE ? ESCAPE '!')"
                )
                pattern = f"%{_like_escape(term)}%"
                args += [pattern, pattern]
            if terms:
                rank = (
                    "CASE WHEN LOWER(m.state_key) LIKE ? ESCAPE '!'"
                    " OR LOWER(p.displayname) LIKE ? ESCAPE '!' THEN 0 ELSE 1 END"
                )
                prefix = f"{_like_escape(terms[0])}%"
                rank_args: list[object] = [f"@{prefix}", prefix]
            else:
                rank, rank_args = "0", []
            sql = (
                f"SELECT m.state_key, p.displayname, p.avatar_url, {rank} AS search_rank"
                " FROM current_state_events m"
                " LEFT JOIN users u ON u.user_id = m.state_key"
                " LEFT JOIN profiles p ON p.user_id = m.state_key"
                " WHERE m.type = 'm.room.member' AND m.membership = 'join'"
                " AND ((m.state_key <> ? AND m.room_id IN ("
                "  SELECT room_id FROM room_memberships WHERE user_id = ? AND membership = ?))"
                " OR m.room_id IN ("
                "  SELECT s.room_id FROM current_state_events s"
                "  JOIN events e ON e.event_id = s.event_id"
                "  WHERE s.state_key = ''"
                "   AND s.type IN ('m.room.join_rules', 'm.room.history_visibility')"
                # The LIKE is a cheap necessary condition (canonical JSON spells the value
                # out as is), so only candidate events are parsed as JSON.
                f"   AND ((s.type = 'm.room.join_rules' AND e.json LIKE ? AND {join_rule} = ?)"
                f"    OR (s.type = 'm.room.history_visibility' AND e.json LIKE ?"
                f"     AND {visibility} = ?))"
                " ))"
                " AND (u.deactivated IS NULL OR u.deactivated = ?)"
                + "".join(conditions)
                + " GROUP BY m.state_key, p.displayname, p.avatar_url"
                " ORDER BY search_rank, CASE WHEN p.displayname IS NULL THEN 1 ELSE 0 END, m.state_key"
            )
            # The rank's placeholders come first in the SELECT list.
            all_args = [*rank_args, *args]
            if limit is not None:
                sql += " LIMIT ?"
                all_args.append(limit)
            return [
                UserDirectoryEntry(row[0], row[1], row[2]) for row in txn.select_all(sql, all_args)
            ]

        return await self._db.run_interaction("search_user_directory", txn_fn)
