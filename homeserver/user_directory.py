"""The user directory (client-server API "User Directory"): finding users to talk to.

A user can find the users they share a room with, and everyone joined to a room whose join
rule is `public` or whose history is `world_readable`; deactivated accounts never show.
The term is split into words; each word must appear, case-insensitively, in the user ID or
the display name (the user's global profile; remote users are matched by user ID until
federation brings their profiles).

Case folding: SQL `LOWER()` folds ASCII on both engines but the rest of Unicode only on
some (PostgreSQL with a UTF-8 ctype, not SQLite). Words that are plain ASCII are matched,
ranked and limited in the database. A word with other characters is narrowed in SQL by its
longest ASCII run (if any), and the candidates are then matched, ranked and limited here
with Python's Unicode-aware `str.lower`, so "élodie" finds "Élodie" on every engine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from storage.stores.directory import UserDirectoryEntry, UserDirectoryStore

DEFAULT_LIMIT = 10
# Results per search at most, whatever the client asks.
MAX_LIMIT = 100
# Words of a search term that are used; the rest are ignored.
MAX_TERMS = 8
MAX_SEARCH_TERM_LENGTH = 256

_ASCII_RUN = re.compile(r"[\x00-\x7f]+")


class UserDirectoryHandler:
    def __init__(self, store: UserDirectoryStore) -> None:
        self._store = store

    async def search(
        self, requester: Requester, search_term: str, limit: int = DEFAULT_LIMIT
    ) -> dict[str, Any]:
        """{"results": [...], "limited": bool} for POST /user_directory/search."""
        if limit < 0:
            raise MatrixError(400, Codes.INVALID_PARAM, "'limit' must not be negative")
        if len(search_term) > MAX_SEARCH_TERM_LENGTH:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"'search_term' is longer than {MAX_SEARCH_TERM_LENGTH}"
            )
        limit = min(limit, MAX_LIMIT)
        terms = search_term.lower().split()[:MAX_TERMS]

        if all(term.isascii() for term in terms):
            entries = await self._store.search_users(requester.user_id, terms, limit + 1)
        else:
            sql_terms = [term if term.isascii() else _longest_ascii_run(term) for term in terms]
            candidates = await self._store.search_users(
                requester.user_id, [t for t in sql_terms if t], None
            )
            entries = _rank([e for e in candidates if _matches(e, terms)], terms)[: limit + 1]

        return {
            "results": [_result(entry) for entry in entries[:limit]],
            "limited": len(entries) > limit,
        }


def _longest_ascii_run(term: str) -> str:
    return max(_ASCII_RUN.findall(term), key=len, default="").strip()


def _matches(entry: UserDirectoryEntry, terms: Sequence[str]) -> bool:
    user_id = entry.user_id.lower()
    name = (entry.display_name or "").lower()
    return all(term in user_id or term in name for term in terms)


def _rank(entries: list[UserDirectoryEntry], terms: Sequence[str]) -> list[UserDirectoryEntry]:
    """The store's order: a prefix match of the first word, then having a display name."""
    first = terms[0] if terms else ""

    def key(entry: UserDirectoryEntry) -> tuple[int, int, str]:
        name = (entry.display_name or "").lower()
        prefix = entry.user_id.lower().startswith("@" + first) or name.startswith(first)
        return (0 if prefix else 1, 0 if entry.display_name is not None else 1, entry.user_id)

    return sorted(entries, key=key)


def _result(entry: UserDirectoryEntry) -> dict[str, Any]:
    result: dict[str, Any] = {"user_id": entry.user_id}
    if entry.display_name is not None:
        result["display_name"] = entry.display_name
    if entry.avatar_url is not None:
        result["avatar_url"] = entry.avatar_url
    return result
