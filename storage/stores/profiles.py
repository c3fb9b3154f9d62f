from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_profile(self, user_id: str) -> Profile | None:
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
