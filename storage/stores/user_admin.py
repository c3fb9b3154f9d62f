"""What the admin API reads about users beyond one account: the filtered, sorted, paged
list of local users, and every piece of a user's account data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from storage.database import Database, Transaction
from storage.engines.base import Engine


@dataclass(frozen=True)
class UserListing:
    user_id: str
    is_guest: bool
    is_admin: bool
    user_type: str | None
    deactivated: bool
    erased: bool
    shadow_banned: bool
    displayname: str | None
    avatar_url: str | None
    created_ts: int
    locked: bool
    suspended: bool
    last_seen_ts: int | None


# Sort keys the list accepts -> the column of the listing that holds it (never user input
# in SQL).
ORDER_COLUMNS = {
    "name": "user_id",
    "is_guest": "is_guest",
    "admin": "is_admin",
    "user_type": "user_type",
    "deactivated": "deactivated",
    "shadow_banned": "shadow_banned",
    "displayname": "displayname",
    "avatar_url": "avatar_url",
    "creation_ts": "created_ts",
    "last_seen_ts": "last_seen_ts",
    "locked": "locked",
}

# Listing columns outside `users`, as SQL.
_COLUMN_SQL = {"displayname": "p.displayname", "avatar_url": "p.avatar_url"}
# Those that can be NULL (the others are NOT NULL columns of `users`).
_NULLABLE_COLUMNS = frozenset({"user_type", "displayname", "avatar_url", "last_seen_ts"})


@dataclass(frozen=True)
class UserQuery:
    """Filters and order of the user list. None for a tri-state filter means "both"."""

    user_id_contains: str | None = None
    # Matches the localpart or the display name.
    name_contains: str | None = None
    guests: bool | None = None
    deactivated: bool | None = None
    admins: bool | None = None
    locked: bool | None = None
    # User types to leave out; "" stands for users without a type.
    not_user_types: tuple[str, ...] = field(default_factory=tuple)
    order_by: str = "name"
    backwards: bool = False


def _like_escape(value: str) -> str:
    """`value` in a LIKE pattern (ESCAPE '\\'), its wildcards taken literally."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(query: UserQuery, engine: Engine, server_name: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    user_id = engine.fold_case("u.user_id")
    if query.name_contains:
        # The localpart or the display name, not the server name: every listed user is
        # local, so the pattern ends with exactly ':' and this server's name, and the
        # term must fall between it and the '@'.
        term = _like_escape(query.name_contains.lower())
        clauses.append(
            f"({user_id} LIKE ? ESCAPE '\\'"
            f" OR {engine.fold_case('p.displayname')} LIKE ? ESCAPE '\\')"
        )
        args += [f"@%{term}%:{_like_escape(server_name.lower())}", f"%{term}%"]
    elif query.user_id_contains:
        clauses.append(f"{user_id} LIKE ? ESCAPE '\\'")
        args.append(f"%{_like_escape(query.user_id_contains.lower())}%")
    for column, wanted in (
        ("u.is_guest", query.guests),
        ("u.deactivated", query.deactivated),
        ("u.is_admin", query.admins),
        ("u.locked", query.locked),
    ):
        if wanted is not None:
            clauses.append(f"{column} = ?")
            args.append(wanted)
    for user_type in query.not_user_types:
        if user_type == "":
            clauses.append("u.user_type IS NOT NULL")
        else:
            clauses.append("(u.user_type IS NULL OR u.user_type <> ?)")
            args.append(user_type)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class UserAdminStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self._db = db
        self._server_name = server_name

    async def list_users(
        self, query: UserQuery, offset: int, limit: int
    ) -> tuple[list[UserListing], int]:
        """One page of local users and how many match in all. Ties in the sort key are
        broken by user ID, ascending, so pages never overlap or skip."""
        column = ORDER_COLUMNS[query.order_by]
        direction = "DESC" if query.backwards else "ASC"
        where, args = _where(query, self._db.engine, self._server_name)
        from_sql = " FROM users AS u LEFT JOIN profiles AS p ON p.user_id = u.user_id"
        last_seen = (
            "(SELECT MAX(d.last_seen_ts) FROM devices AS d WHERE d.user_id = u.user_id)"
        )
        # The sort key as SQL on the tables themselves (not on a derived table), so an
        # index on it can be read in order.
        key = last_seen if column == "last_seen_ts" else _COLUMN_SQL.get(column, "u." + column)
        # NULLs sort first (as the smallest), the same on both engines: SQLite and
        # PostgreSQL disagree by default.
        order = " ORDER BY "
        if column in _NULLABLE_COLUMNS:
            order += f"({key} IS NOT NULL) {direction}, "
        order += f"{key} {direction}"
        if column != "user_id":
            order += ", u.user_id ASC"

        def txn_fn(txn: Transaction) -> tuple[list[UserListing], int]:
            total_row = txn.select_one("SELECT COUNT(*)" + from_sql + where, args)
            # The page's user IDs first, from the sort key alone (an index scan for most
            # orders), then their columns: the rows skipped by `from` are never built.
            rows = txn.select_all(
                "SELECT u.user_id, u.is_guest, u.is_admin, u.user_type, u.deactivated,"
                " u.erased, u.shadow_banned, p.displayname, p.avatar_url, u.created_ts,"
                f" u.locked, u.suspended, {last_seen}"
                " FROM (SELECT u.user_id"
                + from_sql
                + where
                + order
                + " LIMIT ? OFFSET ?) AS page"
                " JOIN users AS u ON u.user_id = page.user_id"
                " LEFT JOIN profiles AS p ON p.user_id = u.user_id"
                + order,
                [*args, limit, offset],
            )
            users = [
                UserListing(
                    row[0], bool(row[1]), bool(row[2]), row[3], bool(row[4]), bool(row[5]),
                    bool(row[6]), row[7], row[8], row[9], bool(row[10]), bool(row[11]), row[12],
                )
                for row in rows
            ]
            return users, int(total_row[0]) if total_row else 0

        return await self._db.run_interaction("admin_list_users", txn_fn)

    async def all_account_data(
        self, user_id: str
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(global type -> content, room ID -> type -> content)."""
        rows = await self._db.run_interaction(
            "admin_all_account_data",
            lambda txn: txn.select_all(
                "SELECT room_id, type, content FROM account_data WHERE user_id = ?"
                " ORDER BY room_id, type",
                (user_id,),
            ),
        )
        global_data: dict[str, Any] = {}
        rooms: dict[str, dict[str, Any]] = {}
        for room_id, data_type, content in rows:
            if room_id:
                rooms.setdefault(room_id, {})[data_type] = json.loads(content)
            else:
                global_data[data_type] = json.loads(content)
        return global_data, rooms
