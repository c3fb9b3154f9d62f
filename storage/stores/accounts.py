from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Transaction


@dataclass(frozen=True)
class Account:
    user_id: str
    password_hash: str | None
    created_ts: int
    is_admin: bool
    is_guest: bool
    deactivated: bool


class UserInUseError(Exception):
    pass


class AccountStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_account(
        self,
        user_id: str,
        password_hash: str | None,
        created_ts: int,
        is_admin: bool = False,
        displayname: str | None = None,
    ) -> None:
        """Create the user and their profile row; raise UserInUseError if the ID is taken."""

        def txn_fn(txn: Transaction) -> None:
            if txn.select_one("SELECT 1 FROM users WHERE user_id = ?", (user_id,)):
                raise UserInUseError(user_id)
            txn.execute(
                "INSERT INTO users (user_id, password_hash, created_ts, is_admin)"
                " VALUES (?, ?, ?, ?)",
                (user_id, password_hash, created_ts, is_admin),
            )
            txn.execute(
                "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
                (user_id, displayname),
            )

        try:
            await self._db.run_interaction("create_account", txn_fn)
        except self._db.engine.integrity_error as e:
            # Two registrations racing for one name: the loser lands here.
            raise UserInUseError(user_id) from e

    async def get_account(self, user_id: str) -> Account | None:
        row = await self._db.run_interaction(
            "get_account",
            lambda txn: txn.select_one(
                "SELECT user_id, password_hash, created_ts, is_admin, is_guest, deactivated"
                " FROM users WHERE user_id = ?",
                (user_id,),
            ),
        )
        if row is None:
            return None
        return Account(row[0], row[1], row[2], bool(row[3]), bool(row[4]), bool(row[5]))

    async def is_user_id_taken(self, user_id: str) -> bool:
        return await self.get_account(user_id) is not None

    async def set_password_hash(self, user_id: str, password_hash: str | None) -> None:
        await self._db.run_interaction(
            "set_password_hash",
            lambda txn: txn.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            ),
        )

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        await self._db.run_interaction(
            "set_admin",
            lambda txn: txn.execute(
                "UPDATE users SET is_admin = ? WHERE user_id = ?", (is_admin, user_id)
            ),
        )

    async def mark_deactivated(self, user_id: str, erase: bool) -> None:
        """Deactivate: no password, and with `erase` the profile is wiped too."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE users SET deactivated = ?, password_hash = NULL WHERE user_id = ?",
                (True, user_id),
            )
            if erase:
                txn.execute(
                    "UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?",
                    (user_id,),
                )

        await self._db.run_interaction("mark_deactivated", txn_fn)
