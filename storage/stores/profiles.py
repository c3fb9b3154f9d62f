from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from storage.database import Database, Transaction


@dataclass(frozen=True)
class Profile:
    displayname: str | None
    avatar_url: str | None
    # The other fields (`m.tz`, custom ones), by key; JSON values.
    fields: dict[str, Any] = field(default_factory=dict)


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_profile(self, user_id: str) -> Profile | None:
        """Display name and avatar URL only (the fields are read by `get_fields`)."""
        row = await self._db.run_interaction(
            "get_profile",
            lambda txn: txn.select_one(
                "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", (user_id,)
            ),
        )
        return Profile(row[0], row[1]) if row else None

    async def set_displayname(self, user_id: str, displayname: str | None) -> None:
        await self._db.run_interaction(
            "set_displayname",
            lambda txn: txn.execute(
                "UPDATE profiles SET displayname = ? WHERE user_id = ?", (displayname, user_id)
            ),
        )

    async def set_avatar_url(self, user_id: str, avatar_url: str | None) -> None:
        await self._db.run_interaction(
            "set_avatar_url",
            lambda txn: txn.execute(
                "UPDATE profiles SET avatar_url = ? WHERE user_id = ?", (avatar_url, user_id)
            ),
        )

    async def get_fields(self, user_id: str) -> dict[str, Any]:
        """The user's profile fields other than display name and avatar URL."""
        rows = await self._db.run_interaction(
            "get_profile_fields", lambda txn: _fields_txn(txn, user_id)
        )
        return rows

    async def set_field(self, user_id: str, name: str, value: Any, max_profile_bytes: int) -> bool:
        """Set one field, unless the whole profile (display name and avatar URL included) would
        then exceed `max_profile_bytes` as JSON: False, and nothing changes. Measured in the
        transaction that writes, so two writers cannot both squeeze under the limit."""
        value_json = json.dumps(value, ensure_ascii=False, separators=(",", ":"))

        def txn(t: Transaction) -> bool:
            row = t.select_one(
                "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", (user_id,)
            )
            profile: dict[str, Any] = _fields_txn(t, user_id)
            profile[name] = value
            if row is not None:
                profile.update(
                    {k: v for k, v in (("displayname", row[0]), ("avatar_url", row[1])) if v}
                )
            if profile_json_size(profile) > max_profile_bytes:
                return False
            t.execute(
                "DELETE FROM profile_fields WHERE user_id = ? AND field_name = ?", (user_id, name)
            )
            t.execute(
                "INSERT INTO profile_fields (user_id, field_name, value_json) VALUES (?, ?, ?)",
                (user_id, name, value_json),
            )
            return True

        return bool(await self._db.run_interaction("set_profile_field", txn))

    async def delete_field(self, user_id: str, name: str) -> None:
        await self._db.run_interaction(
            "delete_profile_field",
            lambda t: t.execute(
                "DELETE FROM profile_fields WHERE user_id = ? AND field_name = ?", (user_id, name)
            ),
        )


def profile_json_size(profile: dict[str, Any]) -> int:
    """The profile's size as the spec's 64 KiB limit counts it: its compact JSON, in bytes."""
    return len(json.dumps(profile, ensure_ascii=False, separators=(",", ":")).encode())


def _fields_txn(t: Transaction, user_id: str) -> dict[str, Any]:
    rows = t.select_all(
        "SELECT field_name, value_json FROM profile_fields WHERE user_id = ? ORDER BY field_name",
        (user_id,),
    )
    return {name: json.loads(value) for name, value in rows}
